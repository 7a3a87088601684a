"""The pack's Wan loader + diffusers' classes compute what ComfyUI's own Wan modules compute from the same
ComfyUI-native files (numbers recorded by wan_comfy_golden.py with ComfyUI v0.3.64, CPU float32): the key maps
carry every weight to its place, per-token timesteps included."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from kit import tiny

from interplay.models.backbones import wan

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "wan_comfy_golden.json").read_text())
_spec = importlib.util.spec_from_file_location("wan_comfy_golden", HERE / "wan_comfy_golden.py")
golden_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_inputs)


def _files(variant):
    f = tiny.tiny_wan_comfy_files(variant=variant)
    return {k: f[k] for k in ("transformer", "transformer_2", "vae", "text_encoder", "clip_vision") if k in f}


def _close(t: torch.Tensor, ref: dict, atol=2e-5):
    flat = t.detach().float().flatten()
    assert list(t.shape) == ref["shape"]
    torch.testing.assert_close(flat[:8], torch.tensor(ref["first"]), rtol=0, atol=atol)
    torch.testing.assert_close(flat[-8:], torch.tensor(ref["last"]), rtol=0, atol=atol)
    assert float(flat.abs().sum()) == pytest.approx(ref["abs_sum"], rel=1e-5)


@pytest.mark.parametrize("variant", tiny.WAN_VARIANTS)
def test_transformer_matches_comfyui(variant):
    bb = wan.load_wan(_files(variant), dtype="fp32", device="cpu")
    cfg = tiny._WAN_TCFG[variant]
    for role, model in zip(("transformer", "transformer_2"), wan.expert_modules(bb).values()):
        x, t, context, clip = golden_inputs.inputs(variant, cfg["in_channels"], cfg["text_dim"], cfg["image_dim"])
        with torch.no_grad():
            y = model(x, t, context, encoder_hidden_states_image=clip, return_dict=False)[0]
        _close(y, GOLDEN["transformers"][f"{variant}/{role}"]["out"])


@pytest.mark.parametrize("name,variant,z,spatial", [("2.1", "2.2", 16, 8), ("2.2", "2.2-ti2v", 48, 16)])
def test_vae_matches_comfyui(name, variant, z, spatial):
    bb = wan.load_wan(_files(variant), dtype="fp32", device="cpu")
    video, latent = golden_inputs.vae_inputs(z, spatial)
    with torch.no_grad():
        _close(bb.vae.decode(latent).sample, GOLDEN["vae"][name]["decode"])
        _close(bb.vae.encode(video).latent_dist.mode(), GOLDEN["vae"][name]["encode"])
