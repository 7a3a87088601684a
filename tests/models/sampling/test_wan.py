"""Wan sampling: every step equals diffusers' Wan pipelines on the tiny kit (CPU float32: bitwise with the
pipeline's one-row-per-forward CFG, within rounding batched), the two-expert switch at the boundary and nowhere
else with each expert's CFG, UniPC and Euler, TI2V's per-token timesteps, memory modes against bf16, the memory
check before allocating, controls through the registry, seeds and interrupt."""
import pytest
import torch
from kit import tiny
from PIL import Image

from interplay.models import runtime
from interplay.models.backbones import base as B
from interplay.models.backbones import wan
from interplay.models.control import registry
from interplay.models.control.base import BoundControl, ControlBranch, ControlSignal
from interplay.models.sampling import flow
from interplay.models.sampling import wan as S


@pytest.fixture(scope="module")
def bbs():
    return {v: wan.load_wan(tiny.tiny_wan_dir(variant=v), dtype="fp32", device="cpu")
            for v in ("2.2", "2.1", "2.1-t2v", "2.2-ti2v")}


@pytest.fixture(autouse=True)
def _no_ftfy(monkeypatch):
    import diffusers.pipelines.wan.pipeline_wan as p
    import diffusers.pipelines.wan.pipeline_wan_i2v as pi

    for mod in (p, pi):  # the pipelines' cleaner needs the optional ftfy; ours runs the same steps without it
        monkeypatch.setattr(mod, "prompt_clean", wan.prompt_clean)


def _image(size, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(size, size, 3, generator=g) * 255).round().to(torch.uint8)
    return Image.fromarray(x.numpy()), x.float()[None] / 255


def _embeds(bb):
    return wan.encode_prompt(bb, ["a red box pushes the blue cylinder"]), wan.encode_prompt(bb, [""])


def _pipe(variant):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanPipeline if variant == "2.1-t2v" else WanImageToVideoPipeline
    return cls.from_pretrained(tiny.tiny_wan_dir(variant=variant))


class ExpertLog(B.Attachment):
    """Records (step, expert, batch) of every forward call."""

    def __init__(self):
        self.calls = []

    def begin(self, ctx):
        self.calls.append((ctx.extra["step"][0], ctx.extra["expert"], ctx.batch))


# ---------------------------------------------------------------------------------- pipeline parity
@pytest.mark.parametrize("variant,size,kw", [
    ("2.2", 32, dict(cfg=3.5, cfg_low_noise=2.0)),  # 4 UniPC steps 999, 937, 833, 625: the switch after 2
    ("2.2", 32, dict(cfg=3.5, scheduler="euler")),
    ("2.1", 32, dict(cfg=5.0)),  # the CLIP image branch
    ("2.2-ti2v", 64, dict(cfg=5.0)),  # per-token timesteps, first frame replaced
    ("2.1-t2v", 32, dict(cfg=5.0)),  # text only (WanPipeline)
])
def test_every_step_is_the_diffusers_pipelines(variant, size, kw, bbs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    bb = bbs[variant]
    pipe = _pipe(variant)
    if kw.get("scheduler") == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    pos, neg = _embeds(bb)
    pil, img = _image(size)
    steps = []
    args = dict(prompt_embeds=pos, negative_prompt_embeds=neg, height=size, width=size, num_frames=5,
                num_inference_steps=4, guidance_scale=kw["cfg"], generator=torch.Generator().manual_seed(7),
                output_type="latent", callback_on_step_end=lambda p, i, t, d: steps.append(d["latents"]) or d)
    if variant != "2.1-t2v":
        args["image"] = pil
    if "cfg_low_noise" in kw:
        args["guidance_scale_2"] = kw["cfg_low_noise"]
    with torch.no_grad():
        ref = pipe(**args).frames
    image = img if variant != "2.1-t2v" else None
    ours = dict(num_frames=5, height=size, width=size, steps=4, seed=7, **kw)
    mine = []
    seq = S.sample_wan(bb, image, pos, neg, batched_cfg=False, callback=lambda i, t, x: mine.append(x), **ours)
    assert len(mine) == len(steps) == 4
    for k in range(4):  # the latents after each scheduler step
        assert torch.equal(mine[k], steps[k]), k
    assert torch.equal(seq, ref)  # (TI2V: both put the image back as latent frame 0 at the end)
    batched = S.sample_wan(bb, image, pos, neg, **ours)
    torch.testing.assert_close(batched, ref, rtol=0, atol=1e-5)  # CPU kernels round batch 2 differently (~2e-6)


# ------------------------------------------------------------------------------------- two experts
def test_the_expert_switch_happens_at_the_boundary_and_nowhere_else(bbs):
    bb = bbs["2.2"]
    pos, neg = _embeds(bb)
    _, img = _image(32)
    for boundary, batched in ((None, True), (None, False), (0.6, True)):
        log = ExpertLog()
        S.sample_wan(bb, img, pos, neg, num_frames=5, steps=10, cfg=3.5, seed=1, attachments=[log],
                     boundary=boundary, batched_cfg=batched)
        ts = flow.make_scheduler("unipc", 5.0, 10).timesteps
        b = 0.9 if boundary is None else boundary
        want = ["high_noise" if float(t) >= b * 1000 else "low_noise" for t in ts]
        assert 0 < want.index("low_noise") < 9  # the schedule straddles the boundary
        per_step = [[e for s, e, _ in log.calls if s == i] for i in range(10)]
        rows = 1 if batched else 2
        assert per_step == [[w] * rows for w in want]  # one expert per step, CFG rows batched (or one per row)
        assert {n for _, _, n in log.calls} == {2 if batched else 1}
    # one expert's CFG at 1 runs one row on its steps only
    log = ExpertLog()
    S.sample_wan(bb, img, pos, neg, num_frames=5, steps=4, cfg=3.5, cfg_low_noise=1.0, seed=1, attachments=[log])
    assert [(e, n) for _, e, n in log.calls] == [("high_noise", 2)] * 2 + [("low_noise", 1)] * 2
    g = S.expert_guidance(bb)  # the release's per-expert scales from the bundle
    assert g["high_noise"].terms[0][0] == g["low_noise"].terms[0][0] == 3.5


def test_memory_modes_against_full_precision_and_the_swap_log(bbs):
    src = tiny.tiny_wan_dir(variant="2.2")
    _, img = _image(32)
    kw = dict(num_frames=5, height=32, width=32, steps=4, cfg=3.5, seed=2)
    ref32 = bbs["2.2"]
    pos, neg = _embeds(ref32)
    want = S.sample_wan(ref32, img, pos, neg, **kw)
    for mode in ("model", "blocks"):  # on the CPU every move is a no-op: the same numbers
        bb = wan.load_wan(src, dtype="fp32", device="cpu", offload=mode, blocks_on_gpu=1)
        assert torch.equal(S.sample_wan(bb, img, pos, neg, **kw), want)
        assert [n for n, _ in bb.extra["placement"].log] == ["high_noise", "low_noise"]  # one swap, at the switch
        assert bb.extra["placement"].resident == set()  # parked for the VAE
    bf16 = wan.load_wan(src, dtype="bf16", device="cpu")
    ref = S.sample_wan(bf16, img, pos, neg, **kw)
    fp8 = wan.load_wan(src, dtype="fp8_e4m3fn", compute_dtype=torch.bfloat16, device="cpu")
    got = S.sample_wan(fp8, img, pos, neg, **kw)

    def rel(a, b):
        return float((a - b).norm() / b.norm())
    assert rel(ref, want) < 0.02  # bf16 against fp32: measured 0.005
    assert rel(got, ref) < 0.05  # fp8 storage (e4m3, 3 mantissa bits) against bf16: measured 0.009


def test_a_too_large_request_fails_before_allocating_and_names_the_mode(bbs, monkeypatch):
    bb = bbs["2.2"]
    pos, neg = _embeds(bb)
    _, img = _image(32)
    stats = bb.extra["stats"]
    need = {(p.offload, p.storage): p.peak for p in wan.memory_plans(
        stats, 10 ** 12, frames=5, height=32, width=32, cfg_batch=2, vae_tiling=False, compute_bytes=4)}
    budget = (need[("model", "bf16")] + need[("none", "bf16")]) / 2

    def no_alloc(*a, **k):
        raise AssertionError("the request allocated before the memory check")
    monkeypatch.setattr(wan, "i2v_condition", no_alloc)
    with pytest.raises(wan.WanMemoryError) as ex:
        S.sample_wan(bb, img, pos, neg, num_frames=5, steps=2, cfg=3.5, memory_budget_gb=budget / wan.GB)
    msg = str(ex.value)
    assert msg.startswith("Wan sampler: ") and "offload='none'" in msg and "Fix: use offload='model'" in msg
    assert "Wan Loader" in msg and "5x32x32, CFG batch 2" in msg
    # no CFG batch (one row per forward) is a smaller request
    small = wan.estimate_memory(stats, offload="none", storage="bf16", frames=5, height=32, width=32, cfg_batch=1,
                                vae_tiling=False, compute_bytes=4)
    assert small.peak < need[("none", "bf16")]


# ----------------------------------------------------------------------------- TI2V, conditions, errors
def test_ti2v_keeps_the_image_as_latent_frame_zero_and_conds_slice_by_frames(bbs):
    bb = bbs["2.2-ti2v"]
    pos, neg = _embeds(bb)
    _, img = _image(64)
    lat = S.sample_wan(bb, img, pos, neg, num_frames=9, steps=2, cfg=5.0, seed=0)
    cond = wan.i2v_condition(bb, img, 9, 64, 64)
    assert lat.shape == (1, 48, 3, 4, 4) and torch.equal(lat[:, :, :1], cond.first_frame_latent)
    conds = S.prepare_conds(bb, img, pos, neg, 9, 64, 64, rows=("uncond", "cond"))
    assert conds.token_mask.shape == (1, 3 * 2 * 2) and float(conds.token_mask[0, :4].sum()) == 0
    ts = S.model_timestep(torch.tensor(700), conds, 2)
    assert ts.shape == (2, 12) and ts[0, :4].tolist() == [0] * 4 and ts[0, 4:].tolist() == [700] * 8
    later = conds.frames(1, 3)  # a causal block past the first frame: every token at t
    assert later.token_mask.shape == (1, 8) and float(later.token_mask.min()) == 1
    i2v = S.prepare_conds(bbs["2.2"], _image(32)[1], pos[..., :32], None, 9, 32, 32)
    block = i2v.frames(1, 3)
    assert block.parts["mask"].shape == (1, 4, 2, 4, 4) and torch.equal(block.parts["image"],
                                                                         i2v.parts["image"][:, :, 1:3])


def test_input_errors_are_named(bbs):
    bb, t2v = bbs["2.2"], bbs["2.1-t2v"]
    pos, neg = _embeds(bb)
    _, img = _image(32)
    with pytest.raises(ValueError, match="image-to-video model; connect an 'image'"):
        S.sample_wan(bb, None, pos, neg, num_frames=5, height=32, width=32, steps=1)
    with pytest.raises(ValueError, match="text-to-video and takes no image"):
        S.sample_wan(t2v, img, pos, neg, num_frames=5, steps=1)
    with pytest.raises(ValueError, match=r"num_frames must be 4k\+1"):
        S.sample_wan(bb, img, pos, neg, num_frames=6, steps=1)
    with pytest.raises(ValueError, match="CFG needs negative prompt embeddings"):
        S.sample_wan(bb, img, pos, None, num_frames=5, steps=1, cfg=3.5)
    with pytest.raises(ValueError, match=r"'latents' must be \[1, 16, 2, 4, 4\]"):
        S.sample_wan(bb, img, pos, neg, num_frames=5, steps=1, latents=torch.zeros(1, 16, 3, 4, 4))
    S.sample_wan(bb, img, pos, None, num_frames=5, steps=1, cfg=1.0)  # no CFG: no negative needed


def test_seed_reproducible_and_interrupt(bbs):
    bb = bbs["2.1-t2v"]
    pos, neg = _embeds(bb)
    kw = dict(num_frames=5, height=32, width=32, steps=2, cfg=5.0)
    a = S.sample_wan(bb, None, pos, neg, seed=4, **kw)
    assert torch.equal(a, S.sample_wan(bb, None, pos, neg, seed=4, **kw))
    assert not torch.equal(a, S.sample_wan(bb, None, pos, neg, seed=5, **kw))
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        S.sample_wan(bb, None, pos, neg, seed=4, **kw)
    assert S._preview(a).size == (4, 4)


# ------------------------------------------------------------------------------------ controls
class AddAfterBlock(B.Attachment):
    """A toy Wan branch: adds weight x a fixed vector after block 0 on the rows it is told about."""

    def __init__(self, branch, bound, backbone=None):
        self.vec = branch.module.vec
        self.bound = bound

    def active(self, step):
        return any(bc.active(*step) for bc in self.bound)

    def after_block(self, ctx, i, hidden):
        if i != 0:
            return hidden
        w = sum(bc.weight for bc in self.bound if bc.active(*ctx.extra["step"]))
        keep = (~ctx.row_mask("no_control")).to(hidden.dtype).view(-1, 1, 1)
        return hidden + w * keep * self.vec.to(hidden.dtype)


def _toy_branch(bb):
    kind = "test_wan_add"
    if kind not in {s.kind for s in registry.kinds()}:
        registry.register(registry.BranchKind(kind=kind, family="wan", label="test Wan branch", signals=(),
                                              attach=AddAfterBlock))
    mod = torch.nn.Module()
    d = bb.denoiser.config.num_attention_heads * bb.denoiser.config.attention_head_dim
    mod.vec = torch.nn.Parameter(torch.linspace(-1, 1, d), requires_grad=False)
    return ControlBranch(kind=kind, family="wan", module=mod)


def test_controls_attach_through_the_registry_with_weight_range_and_guidance(bbs):
    bb = bbs["2.2"]
    pos, neg = _embeds(bb)
    _, img = _image(32)
    br = _toy_branch(bb)
    kw = dict(num_frames=5, steps=4, cfg=3.5, seed=3)
    plain = S.sample_wan(bb, img, pos, neg, **kw)
    on = S.sample_wan(bb, img, pos, neg, controls=[BoundControl(br, None, 0.5)], **kw)
    assert (on - plain).abs().max() > 1e-3
    zero = S.sample_wan(bb, img, pos, neg, controls=[BoundControl(br, None, 0.0)], **kw)
    assert torch.equal(zero, plain)
    late = S.sample_wan(bb, img, pos, neg, controls=[BoundControl(br, None, 0.5, 0.5, 1.0)], **kw)
    assert not torch.equal(late, on) and not torch.equal(late, plain)
    log = ExpertLog()
    S.sample_wan(bb, img, pos, neg, controls=[BoundControl(br, None, 0.5, 0.0, 0.5)], control_cfg=2.0,
                 attachments=[log], **kw)
    assert [n for _, _, n in log.calls] == [3, 3, 2, 2]  # the "no_control" row only where the control runs
    # a control of any channel count (a camera branch's 6-channel Plücker rays) reaches its branch fitted
    seen = []
    if "test_wan_cam" not in {k.kind for k in registry.kinds()}:
        registry.register(registry.BranchKind(kind="test_wan_cam", family="wan", label="test camera branch",
                                              signals=("test_plucker",),
                                              attach=lambda b, bound, bb: seen.append(bound) or B.Attachment()))
    cam = ControlBranch(kind="test_wan_cam", family="wan", module=torch.nn.Module())
    rays = ControlSignal(torch.rand(5, 40, 48, 6), "test_plucker")
    assert torch.equal(S.sample_wan(bb, img, pos, neg, controls=[rays], branch=cam, **kw), plain)
    assert seen[0][0].signal.video.shape == (5, 32, 32, 6)
    cog = ControlBranch(kind="kinemask", family="cogvideox", module=torch.nn.Module())
    with pytest.raises(ValueError, match="works on cogvideox backbones; this sampler runs wan"):
        S.sample_wan(bb, img, pos, neg, controls=[BoundControl(cog, None, 1.0)], **kw)
