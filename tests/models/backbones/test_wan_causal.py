"""The causal Wan converter on a tiny checkpoint built here in Self-Forcing's / LongLive's key layout (a torch.save'd
dict with generator / generator_ema state dicts of their WanDiffusionWrapper: original Wan names under ``model.``,
some FSDP wrapper names): the converted file loads in the Wan Loader and runs exactly the model it was made from;
the marker is found; LoRA files, other models and pickled code are refused by name."""
import json

import pytest
import torch
from kit import tiny

from interplay.models.backbones import wan, wan_causal, wan_convert
from interplay.models.weights import read_metadata


def _native(seed=0):
    from diffusers import WanTransformer3DModel

    tr = WanTransformer3DModel.from_pretrained(tiny.tiny_wan_dir(seed, "2.1-t2v") / "transformer")
    return tr, {wan_convert.transformer_key_to_native(k): v.clone() for k, v in tr.state_dict().items()}


def _wrapped(sd):
    out = {}
    for i, (k, v) in enumerate(sd.items()):
        # Self-Forcing's wrapper names the transformer "model"; FSDP adds its own module names on some saves
        out[("model._fsdp_wrapped_module." if k.startswith("blocks.0.") else "model.") + k] = v
    return out


def test_converted_checkpoint_loads_and_equals_the_original(tmp_path):
    tr, sd = _native()
    noise = {k: torch.randn_like(v) for k, v in sd.items()}
    pt = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": _wrapped(noise), "generator_ema": _wrapped(sd), "step": 600}, pt)
    files = tiny.tiny_wan_comfy_files(variant="2.1-t2v")
    dst = tmp_path / "diffusion_models" / "self_forcing_dmd.safetensors"
    wan_causal.convert_causal_checkpoint(pt, dst, head_dim=tr.config.attention_head_dim)
    meta = read_metadata(dst)
    info = json.loads(meta[wan_causal.CAUSAL_KEY])
    assert info["entry"] == "generator_ema" and info["block_latent_frames"] == 3 and info["layers"] == 2
    bb = wan.load_wan(dict(transformer=dst, vae=files["root"] / files["vae"],
                           text_encoder=files["root"] / files["text_encoder"]), dtype="fp32", device="cpu")
    assert wan_causal.causal_info(bb)["source"] == "self_forcing"
    ref = wan.load_wan(tiny.tiny_wan_dir(variant="2.1-t2v"), dtype="fp32", device="cpu")
    assert wan_causal.causal_info(ref) is None
    for k, v in bb.denoiser.state_dict().items():
        assert torch.equal(v, ref.denoiser.state_dict()[k]), k
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(wan.forward(bb, x, torch.tensor([500.0]), text), wan.forward(ref, x, torch.tensor([500.0]), text))
    # the other entry on request
    wan_causal.convert_causal_checkpoint(pt, tmp_path / "g.safetensors", which="generator", head_dim=16)
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "g.safetensors")["head.head.weight"], noise["head.head.weight"])


def test_refusals(tmp_path):
    _, sd = _native()
    lora = tmp_path / "lora.pt"
    torch.save({"generator_lora": {"model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 32)}}, lora)
    with pytest.raises(ValueError, match="LoRA"):
        wan_causal.convert_causal_checkpoint(lora, tmp_path / "x.safetensors", which="generator_lora")
    other = tmp_path / "other.pt"
    torch.save({"generator": {"model.encoder.weight": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not Wan transformer weights"):
        wan_causal.convert_causal_checkpoint(other, tmp_path / "x.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "bad.pt"
    torch.save({"generator": Evil()}, bad)
    with pytest.raises(ValueError, match="weights_only=True"):
        wan_causal.convert_causal_checkpoint(bad, tmp_path / "x.safetensors")
    pt = tmp_path / "ok.pt"
    torch.save({"generator": _wrapped(sd)}, pt)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        wan_causal.convert_causal_checkpoint(pt, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="head_dim 7 does not divide"):
        wan_causal.convert_causal_checkpoint(pt, tmp_path / "x.safetensors", head_dim=7)
