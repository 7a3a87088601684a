"""The speed options of every sampler: one fp8 module for every family (the input model untouched, the pack's W8A8
on the CPU close to full precision, named refusals on hardware without fp8), regional compile restored after the
call, the SDPA backend forced or refused with the reason; the defaults leave the old outputs bitwise."""
import pytest
import torch

from interplay.models import fp8
from interplay.models.backbones import cogvideox as cog
from interplay.models.backbones import svd as svdb
from interplay.models.backbones import wan
from interplay.models.sampling import cogvideox as SC
from interplay.models.sampling import wan as SW
from interplay.models.sampling.speed import Speed


@pytest.fixture(scope="module")
def cogbb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _cog(bb, speed=None, steps=3):
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    pos, neg = cog.encode_prompt(bb, ["a red cube slides right"]), cog.encode_prompt(bb, [""])
    return SC.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=steps, cfg=6.0, seed=3, speed=speed)


def test_fp8_converts_a_copy_of_every_family_and_leaves_the_model(cogbb, tiny_svd, tiny_wan):
    sb = svdb.load_svd(tiny_svd, dtype=torch.float32, device="cpu")
    wb = wan.load_wan(tiny_wan, dtype="fp32", device="cpu")
    for model in (cogbb.denoiser, sb.denoiser, wb.denoiser):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        paths = fp8.token_linears(model)
        twin, n = fp8.convert(model, "cpu", "auto")
        assert n == len(paths) > 0
        assert all(isinstance(twin.get_submodule(p), fp8.FP8Linear) for p in paths)
        assert all(isinstance(model.get_submodule(p), torch.nn.Linear) for p in paths)  # the input is untouched
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # CogVideoX: q, k, v, out of attn1 and the two feed-forward linears per block; the adaLN linears stay
    assert fp8.token_linears(cogbb.denoiser)[:3] == ["transformer_blocks.0.attn1.to_k", "transformer_blocks.0.attn1."
                                                     "to_out.0", "transformer_blocks.0.attn1.to_q"]
    assert len(fp8.token_linears(cogbb.denoiser)) == 2 * 6


def test_fp8_sampling_is_close_and_the_default_is_bitwise(cogbb):
    ref = _cog(cogbb)
    assert torch.equal(_cog(cogbb, Speed()), ref)
    got = _cog(cogbb, Speed(fp8="pack"))
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.05  # e4m3 weights: ~3 significant bits of rounding, through 3 steps
    assert "_fp8_copies" in cogbb.extra and len(cogbb.extra["_fp8_copies"]) == 1  # kept for the next run
    assert torch.equal(_cog(cogbb, Speed(fp8="pack")), got)


def test_fp8_refusals_name_the_hardware(monkeypatch):
    assert fp8.backend("auto", "cpu") == "pack"
    if not fp8.torchao_available():
        with pytest.raises(ValueError, match="needs torchao .*pip install torchao"):
            fp8.backend("torchao", "cpu", "Wan Sampler")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"CogVideoX Sampler: fp8 needs .*8\.9.*A100-SXM4-80GB is 8\.0.*'off'"):
        fp8.check_device("cuda", "CogVideoX Sampler")
    with pytest.raises(ValueError, match="fp8 must be one of off, auto, torchao, pack"):
        fp8.backend("e5m2", "cpu")


def test_attention_backend_forced_or_refused(cogbb):
    ref = _cog(cogbb, steps=2)
    got = _cog(cogbb, Speed(attention="math"), steps=2)
    assert float((got - ref).abs().max()) < 1e-4  # another kernel, the same attention
    with pytest.raises(ValueError, match="CogVideoX sampler: attention 'efficient' cannot run here \\(cpu.*needs a "
                                         "CUDA GPU.*'auto'"):
        _cog(cogbb, Speed(attention="efficient"))
    with pytest.raises(ValueError, match="attention must be one of auto, flash"):
        Speed(attention="sage")


def test_regional_compile_runs_every_family_and_is_undone(cogbb, tiny_svd, tiny_wan):
    """Dynamo traces the blocks (the eager backend keeps the test fast; inductor is the default)."""
    opts = {"backend": "eager"}
    ref = _cog(cogbb, steps=2)
    got = _cog(cogbb, Speed(compile=True, compile_options=opts), steps=2)
    assert torch.equal(got, ref)
    assert all(m._compiled_call_impl is None for m in cogbb.denoiser.modules())  # eager again afterwards
    sb = svdb.load_svd(tiny_svd, dtype=torch.float32, device="cpu")  # (its compiled step: bench_scale's CPU test)
    n = svdb.compile_blocks(sb, backend="eager")
    assert n == sum(type(m).__name__ in ("SpatioTemporalResBlock", "TransformerSpatioTemporalModel")
                    for m in sb.denoiser.modules()) > 0
    for m in sb.denoiser.modules():
        m._compiled_call_impl = None
    wb = wan.load_wan(tiny_wan, dtype="fp32", device="cpu")
    pos, neg = wan.encode_prompt(wb, ["a red box"]), wan.encode_prompt(wb, [""])
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    kw = dict(num_frames=5, steps=2, cfg=3.5, seed=1)
    assert torch.equal(SW.sample_wan(wb, image, pos, neg, speed=Speed(compile=True, compile_options=opts), **kw),
                       SW.sample_wan(wb, image, pos, neg, **kw))
    assert all(m._compiled_call_impl is None for e in wan.expert_modules(wb).values() for m in e.modules())


def test_fp8_keeps_lora_matrices_and_converts_the_layer_they_wrap(cogbb):
    from interplay.models.training.lora import add_lora, shared_copy

    den = add_lora(shared_copy(cogbb.denoiser), rank=16)
    paths = fp8.token_linears(den)
    assert "transformer_blocks.0.attn1.to_q.base_layer" in paths
    assert not [p for p in paths if "lora_" in p]
    twin, _ = fp8.convert(den, "cpu", "pack")
    x = torch.randn(1, 5, den.transformer_blocks[0].attn1.to_q.in_features)
    lin = den.transformer_blocks[0].attn1.to_q
    got = twin.transformer_blocks[0].attn1.to_q(x)
    assert float((got - lin(x)).abs().max() / lin(x).abs().max()) < 0.05  # LoRA (B = 0) over an fp8 base layer
