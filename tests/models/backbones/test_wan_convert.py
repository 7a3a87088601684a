"""The ComfyUI-native <-> diffusers key maps of the Wan family, checked against two readers that are not ours:
diffusers' own single-file converters and ComfyUI's modules (their key sets recorded in wan_comfy_golden.json by
wan_comfy_golden.py, with a strict load of the kit's files)."""
import json
from pathlib import Path

import pytest
import torch
from kit import tiny
from safetensors import safe_open
from safetensors.torch import load_file

from interplay.models.backbones import wan, wan_convert

GOLDEN = json.loads((Path(__file__).parent / "wan_comfy_golden.json").read_text())


def _same_sd(a: dict, b: dict):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:6]
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("variant", tiny.WAN_VARIANTS)
def test_native_files_read_by_diffusers_converters_are_the_folder_weights(variant):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

    files, folder = tiny.tiny_wan_comfy_files(variant=variant), tiny.tiny_wan_dir(variant=variant)
    for role in (["transformer", "transformer_2"] if variant == "2.2" else ["transformer"]):
        native = load_file(str(files[role]))
        assert "head.modulation" in native and "blocks.0.self_attn.q.weight" in native
        if variant == "2.1":
            assert "blocks.1.cross_attn.k_img.weight" in native and "img_emb.proj.0.weight" in native
        _same_sd(convert_wan_transformer_to_diffusers(dict(native)),
                 WanTransformer3DModel.from_pretrained(folder / role).state_dict())
    if variant != "2.2-ti2v":  # diffusers converts only the Wan2.1 VAE layout (the 2.2 VAE: ComfyUI golden below)
        _same_sd(convert_wan_vae_to_diffusers(load_file(str(files["vae"]))),
                 AutoencoderKLWan.from_pretrained(folder / "vae").state_dict())


def _header_shapes(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def test_native_key_sets_are_comfyuis():
    for name, g in GOLDEN["transformers"].items():
        variant, role = name.split("/")
        assert _header_shapes(tiny.tiny_wan_comfy_files(variant=variant)[role]) == g["keys"], name
    for name, variant in (("2.1", "2.2"), ("2.2", "2.2-ti2v")):
        assert _header_shapes(tiny.tiny_wan_comfy_files(variant=variant)["vae"]) == GOLDEN["vae"][name]["keys"]


def test_maps_are_bijections_at_release_size():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    for name, cfg in wan.RELEASE_TRANSFORMERS.items():
        with torch.device("meta"):
            keys = list(WanTransformer3DModel(**cfg).state_dict())
        native = [wan_convert.transformer_key_to_native(k) for k in keys]
        assert None not in native and len(set(native)) == len(keys), name
        assert [wan_convert.transformer_key_to_diffusers(k) for k in native] == keys
        assert f"blocks.{cfg['num_layers'] - 1}.self_attn.o.weight" in native and "head.modulation" in native
        assert ("blocks.0.cross_attn.k_img.weight" in native) == (cfg["image_dim"] is not None)
    for cfg, probe in ((wan.VAE21, "decoder.upsamples.14.residual.6.weight"),
                       (wan.VAE22, "decoder.upsamples.0.upsamples.0.residual.2.weight")):
        with torch.device("meta"):
            keys = list(AutoencoderKLWan(**cfg).state_dict())
        to_native = wan_convert.vae_keys_to_native(keys)
        assert None not in to_native.values() and len(set(to_native.values())) == len(keys)
        back = wan_convert.vae_keys_to_diffusers(to_native.values())
        assert [back[to_native[k]] for k in keys] == keys
        assert probe in to_native.values() and "decoder.middle.0.residual.0.gamma" in to_native.values()
    assert wan_convert.transformer_key_to_diffusers("blocks.0.vace_proj.weight") is None  # never guessed


def test_scaled_fp8_keys_are_split_from_weights():
    names = ["scaled_fp8", "blocks.0.self_attn.q.weight", "blocks.0.self_attn.q.scale_weight",
             "blocks.0.self_attn.q.scale_input", "blocks.0.self_attn.q.bias", "spiece_model",
             "model.diffusion_model.scaled_fp8"]
    weights, scales, ignored = wan_convert.split_scaled_fp8(names)
    assert weights == ["blocks.0.self_attn.q.weight", "blocks.0.self_attn.q.bias"]
    assert scales == {"blocks.0.self_attn.q.weight": "blocks.0.self_attn.q.scale_weight"}
    assert sorted(ignored) == sorted(["scaled_fp8", "blocks.0.self_attn.q.scale_input", "spiece_model",
                                      "model.diffusion_model.scaled_fp8"])
