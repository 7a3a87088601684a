"""Memory budgets: hand-computed estimates, the one check's message, and big jobs refused within a second of CPU
before they allocate (Sandbox Scene, the CogVideoX and SVD samplers), with the GB needed in the message."""
import time

import pytest
import torch

from interplay.models import memory as M
from interplay.models import runtime

GB = 1e9


@pytest.fixture
def free(monkeypatch):
    """Pretend the machine has 16 GB free on every device, so the refusals do not depend on the test box."""
    monkeypatch.setattr(runtime, "free_memory", lambda device=None, want=None: int(16 * GB))
    monkeypatch.delenv(M.SKIP_ENV, raising=False)


def _refused_within_a_second(fn, *parts):
    t0 = time.process_time()
    with pytest.raises(M.MemoryBudgetError) as ei:
        fn()
    cpu = time.process_time() - t0
    assert cpu < 1.0, f"took {cpu:.2f} s of CPU to refuse"
    msg = str(ei.value)
    for p in parts:
        assert p in msg, msg
    return msg


def test_check_names_the_need_the_free_and_the_fix(free, monkeypatch):
    msg = _refused_within_a_second(lambda: M.check("Job", {"a": 10 * GB, "b": 5 * GB, "tiny": 1}, "cpu", "do less"))
    assert msg == ("Job: needs about 15.0 GB of RAM (a 10.0 GB, b 5.0 GB) but 16.0 GB is free. Fix: do less. "
                   "(To try anyway, set INTERPLAY_SKIP_MEMORY_CHECK=1.)")  # 15 > 0.9 x 16
    assert M.check("Job", {"a": 14.4 * GB - 1}, "cpu", "x") == int(14.4 * GB - 1)  # just under 0.9 x 16 GB
    _refused_within_a_second(lambda: M.check("Job", {"a": 14.4 * GB + 1}, "cuda:0", "x"), "of cuda:0 memory")
    monkeypatch.setenv(M.SKIP_ENV, "1")
    assert M.check("Job", {"a": 100 * GB}, "cpu", "x") == 100 * GB


def test_estimates_by_hand():
    # one DiT step: rows 2, 1000 video + 10 text tokens, width 64 = 4 heads x 16, fp32 on the CPU (fused SDPA)
    p = M.dit_sampling(rows=2, video_tokens=1000, text_tokens=10, width=64, heads=4, dtype=torch.float32,
                       device="cpu", residual_layers=3)
    assert p == {"activations": 2 * 1010 * 64 * 4 * 14,                    # stream, norm, q, k, v, out + 2 x 4 wide
                 "attention (sdpa)": 2 * 2 * 4 * 1010 * 16 * 4 + 2 * 4 * 1010 * 4,
                 "control residuals": 3 * 2 * 1000 * 64 * 4}
    assert M.attention_bytes(2, 4, 1010, 1010, 16, torch.float16, "math") == 2 * 2 * 4 * 1010 * 1010 * 2
    assert M.vae_decode(frames=9, height=32, width=48, channels=8, chunk_frames=4) == {
        "decoded frames": 9 * 32 * 48 * 3 * 4, "decoder activations": 8 * 4 * 32 * 48 * 4 * 4}
    px = 1536 * 1536 * 512  # uint8 rgb 3, int16 IDs x3 6, masks 7+1, float32 frames x2 24, driven 4+1
    assert sum(M.sandbox_scene(1536, 1536, 512).values()) == px * 46 + 1536 * 1536 * 128


def test_sandbox_scene_is_refused_before_rendering(free):
    from interplay.nodes.sandbox import InterplaySandboxScene

    node = InterplaySandboxScene()
    # the size (now above the widget's max: only API prompts that skip validation reach it)
    _refused_within_a_second(lambda: node.make("push", 0, 2048, 2048, 1024, 8.0), "needs about 198.1 GB of RAM",
                             "Fix: a smaller width/height or fewer frames than 2048 x 2048 x 1024")
    _refused_within_a_second(lambda: node.make("push", 0, 1536, 1536, 512, 8.0), "needs about 55.9 GB")
    spec = node.INPUT_TYPES()["required"]
    assert (spec["width"][1]["max"], spec["height"][1]["max"], spec["frames"][1]["max"]) == (1536, 1536, 512)
    frames = node.make("push", 0, 32, 32, 3, 8.0)[0]  # small scenes are untouched
    assert frames.shape == (3, 32, 32, 3)


def test_cogvideox_sampler_is_refused_before_sampling(free):
    from interplay.models.backbones import cogvideox as cvx
    from interplay.models.sampling.cogvideox import sample_cogvideox

    bb = cvx.random_backbone("tiny", seed=0)
    emb = torch.zeros(1, bb.denoiser.config.max_text_seq_length, bb.denoiser.config.text_embed_dim)
    image = torch.rand(1, 2048, 2048, 3)
    dev, host = M.cogvideox_sampling(bb, 161, 2048, 2048, rows=2)
    need = sum(dev.values())
    assert need > 14.4 * GB
    _refused_within_a_second(lambda: sample_cogvideox(bb, image, emb, emb, num_frames=161, steps=2, cfg=6.0,
                                                      decode=True),
                             f"CogVideoX sampler: needs about {need / GB:.1f} GB of RAM", "turn vae_tiling on")
    lat = sample_cogvideox(bb, torch.rand(1, 32, 32, 3), emb, None, num_frames=9, steps=1, cfg=1.0, decode=True)
    assert lat.shape[0] == 1


def test_svd_sampler_is_refused_before_sampling(free):
    from interplay.models.backbones import svd
    from interplay.models.sampling.edm import sample_svd

    bb = svd.random_backbone("tiny", seed=0)
    emb = torch.zeros(1, 1, bb.denoiser.config.cross_attention_dim)
    _refused_within_a_second(lambda: sample_svd(bb, torch.rand(1, 2048, 2048, 3), num_frames=64, steps=2,
                                                num_samples=16, image_embeds=emb, decode=True),
                             "SVD sampler: needs about", "Fix: generate fewer frames, samples or a smaller size")
