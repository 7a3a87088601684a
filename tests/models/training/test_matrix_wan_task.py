"""MATRIX training on the tiny Wan2.1 I2V (the code preset's family): the LoRA sits on the cross- (v2t) and self-
attention (v2v) modules of the chosen blocks, the alignment losses reach q and k of the captured module and never its
v and out, the ID map widens the patch embedding 36 -> 56, the file round-trips into a sampling backbone (strength
0.5, no CLIP context) whose zero-initialised form is the plain backbone, and the Wan Sampler node takes the ID map."""
import pytest
import torch

from interplay.models.backbones import wan
from interplay.models.sandbox.dataset import SandboxDataset, write_clip
from interplay.models.sandbox.presets import generate_scene
from interplay.models.training import alignment as A
from interplay.models.training import config as CFG
from interplay.models.training import matrix as MX
from interplay.models.training import trainer as T
from interplay.models.training.matrix_wan import MatrixWanTask


@pytest.fixture(scope="module")
def wbb(tiny_wan21):
    return wan.load_wan(tiny_wan21, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_wan")
    for s in (0, 1):
        write_clip(generate_scene("multi", seed=s, size=(64, 64), frames=5), root / f"clip{s:03d}")
    ds = SandboxDataset(root)
    return T.collate([ds[0], ds[1]])


def _task(wbb, randomise=True, **kw):
    torch.manual_seed(0)
    t = MatrixWanTask(wbb, **{"preset": "code", "v2t_layers": (1,), "v2v_layers": (1,), "lora_rank": 4, **kw})
    if randomise:
        with torch.no_grad():  # B starts at zero, which would hide every gradient into A
            for n, p in t.lora.denoiser.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    return t


def _grads(t, loss):
    named = {n: p for n, p in t.lora.denoiser.named_parameters() if p.requires_grad and "lora_" in n}
    named.update({f"proj.{n}": p for n, p in t.proj.named_parameters()})
    named.update({f"dec.{n}": p for n, p in t.decoders.named_parameters()})
    gs = torch.autograd.grad(loss, list(named.values()), allow_unused=True, retain_graph=True)
    return {n: (0.0 if g is None else float(g.abs().sum())) for n, g in zip(named, gs)}


def _sum(g, *parts):
    return sum(v for n, v in g.items() if all(p in n for p in parts))


def test_wan_alignment_losses_train_q_and_k_of_the_captured_modules(wbb, batch):
    t = _task(wbb)
    assert sorted(t.hp["lora_targets"]) == sorted(f"blocks.1.{a}.{p}" for a in ("attn1", "attn2")
                                                  for p in ("to_q", "to_k", "to_v", "to_out.0"))
    assert t.bb.extra["clip"] is False and wbb.extra["clip"] is True  # code preset: no CLIP context; input intact
    assert t.max_text_length == 512 and t.hp["input"] == ["id_map", 20] and t.proj.weight.shape[1] == 56
    assert list(t.decoders) == ["shared"] and t.decoders["shared"].num_parameters() < 1_000_000
    terms = t.terms(batch, torch.Generator().manual_seed(0))
    assert float(terms["sga"].detach()) > 0 and float(terms["spa"].detach()) > 0 and torch.isfinite(terms["dm"])
    g = _grads(t, terms["sga"])  # v2t of blocks.1.attn2: its q and k, and everything before (attn1 of block 1)
    assert _sum(g, "attn2.to_q") > 0 and _sum(g, "attn2.to_k") > 0
    assert _sum(g, "attn2.to_v") == 0 and _sum(g, "attn2.to_out") == 0
    assert _sum(g, "attn1.to_v") > 0 and _sum(g, "proj.") > 0 and _sum(g, "dec.") > 0
    g = _grads(t, terms["spa"])  # v2v of blocks.1.attn1: attn2 of the block comes after it
    assert _sum(g, "attn1.to_q") > 0 and _sum(g, "attn1.to_k") > 0
    assert _sum(g, "attn1.to_v") == 0 and _sum(g, "attn1.to_out") == 0 and _sum(g, "attn2.") == 0
    g = _grads(t, terms["dm"])
    assert _sum(g, "attn2.to_v") > 0 and _sum(g, "dec.") == 0
    # the task's total is L_DM + lambda_SGA L_SGA + lambda_SPA L_SPA with the code preset's 0.01 / 0.005 (the
    # flow-matching loss is unweighted, so the timestep weight is 1)
    loss = A.total_loss(terms["dm"], terms["sga"], terms["spa"], t.preset, timestep_weight=1.0)
    want = terms["dm"] + 0.01 * terms["sga"] + 0.005 * terms["spa"]
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0.0)


def test_wan_weights_file_round_trip_and_the_sampler_takes_the_id_map(wbb, tmp_path):
    from interplay.nodes.matrix import InterplayMatrixIdMap, InterplayMatrixIdMapInput
    from interplay.nodes.wan import InterplayWanSampler

    t = _task(wbb, randomise=False)
    path = tmp_path / "m.safetensors"
    t.save_weights(path, t.trainable_state_dict())
    sd, meta = MX.read_matrix(path)
    assert "transformer.patch_embedding.weight" in sd and tuple(sd["transformer.patch_embedding.weight"].shape)[1] == 56
    assert "transformer.blocks.1.attn2.to_q.lora_A.weight" in sd and meta["family"] == "wan"
    m = MX.load_matrix(wbb, path)
    assert m.layout.parts[-1] == ("id_map", 20) and m.loras[-1] == ("m.safetensors", 0.5)  # code: strength 0.5
    assert m.extra["clip"] is False and wbb.layout.channels == 36 and not wbb.loras
    g = torch.Generator().manual_seed(0)
    x, tt, e = torch.randn(1, 56, 2, 4, 4, generator=g), torch.tensor([500.0]), torch.randn(1, 512, 32, generator=g)
    with torch.no_grad():
        # zero-initialised LoRA B and ID-map kernels: the MATRIX model is the plain backbone for any ID map
        assert torch.equal(wan.forward(m, x, tt, e), wan.forward(wbb, x[:, :36], tt, e))
        t.proj.weight[:, 36:].normal_(0, 0.5, generator=g)
    t.save_weights(path, t.trainable_state_dict())
    m = MX.load_matrix(wbb, path)
    masks = torch.zeros(1, 32, 32)
    masks[0, 4:20, 4:20] = 1
    idm = InterplayMatrixIdMap().build("higher_id", "", masks=masks)["result"][1]
    inputs = InterplayMatrixIdMapInput().build(id_map=idm)["result"][0]
    kw = dict(negative="", width=32, height=32, num_frames=5, steps=2, cfg=1.0, cfg_low_noise=0.0, shift=0.0,
              scheduler="unipc", boundary=0.0, seed=3, decode=False, image=torch.rand(1, 32, 32, 3))
    a = InterplayWanSampler().sample(m, "a box", **kw, inputs=inputs)[1]["samples"]
    b = InterplayWanSampler().sample(m, "a box", **kw)[1]["samples"]
    assert (a - b).abs().max() > 1e-4  # the ID map reaches the model


def test_matrix_lora_task_picks_the_family_and_refuses_what_does_not_fit(wbb, tiny_wan):
    t = CFG.build_task("matrix_lora", wbb, {"preset": "code", "v2t_layers": "0", "v2v_layers": "1", "lora_rank": 2})
    assert isinstance(t, MatrixWanTask) and t.preset.v2t_attention == "attn2"
    with pytest.raises(ValueError, match="layers 0..1"):
        MatrixWanTask(wbb, preset="code")  # 20, 24 / 6, 8 are the 14B's blocks
    with pytest.raises(ValueError, match="two experts"):
        MatrixWanTask(wan.load_wan(tiny_wan, dtype="fp32", device="cpu"), v2t_layers=(0,), v2v_layers=(1,))
