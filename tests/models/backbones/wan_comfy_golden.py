"""Regenerate wan_comfy_golden.json: ComfyUI's own Wan modules read the tiny kit's ComfyUI-native files.

Not a test (needs a ComfyUI source tree, absent on CI): run it once when the kit's Wan models change,

    python tests/models/backbones/wan_comfy_golden.py /path/to/ComfyUI

For every native file it records (1) the key set and shapes of ComfyUI's module at the tiny config, after a strict
``load_state_dict`` of the file (so the kit writes the names ComfyUI reads), and (2) the first and last values of
ComfyUI's forward on fixed inputs: WanModel (I2V with CLIP features, T2V, TI2V with per-token timesteps), the 2.1
and 2.2 VAE decode and encode. tests/models/backbones/test_wan_comfy.py compares the pack's loader + diffusers'
classes against these numbers: an independent reader of the same files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/ (the kit)


def inputs(variant: str, in_channels: int, text_dim: int, clip_dim: int | None):
    """The fixed inputs, shared with test_wan_comfy.py (seed 0, CPU)."""
    g = torch.Generator().manual_seed(0)
    f, h, w = 2, 4, 4
    x = torch.randn(1, in_channels, f, h, w, generator=g)
    context = torch.randn(1, 512, text_dim, generator=g)
    clip = torch.randn(1, 50, clip_dim, generator=g) if clip_dim else None
    if variant == "2.2-ti2v":  # per-token timesteps: the tokens of latent frame 0 at t = 0
        t = torch.full((1, f * (h // 2) * (w // 2)), 700.0)
        t[:, : (h // 2) * (w // 2)] = 0
    else:
        t = torch.tensor([700.0])
    return x, t, context, clip


def vae_inputs(z: int, spatial: int):
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 5, 2 * spatial * 2, 2 * spatial * 2, generator=g) * 2 - 1  # 5 frames, 4x4 latents
    latent = torch.randn(1, z, 2, 4, 4, generator=g)
    return video, latent


def _slice(t: torch.Tensor) -> dict:
    flat = t.detach().float().flatten()
    return {"shape": list(t.shape), "first": flat[:8].tolist(), "last": flat[-8:].tolist(),
            "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum())}


def main(comfy_root: str) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.model as cmodel
    import comfy.ldm.wan.vae as cvae
    import comfy.ldm.wan.vae2_2 as cvae22
    import comfy.ops
    from kit import tiny
    from safetensors.torch import load_file

    ops = comfy.ops.disable_weight_init
    out = {"comfy": comfy_root, "transformers": {}, "vae": {}}
    orig_mlp = cmodel.MLPProj.__init__

    for variant in tiny.WAN_VARIANTS:
        files = tiny.tiny_wan_comfy_files(variant=variant)
        cfg = tiny._WAN_TCFG[variant]
        clip_dim = cfg["image_dim"]
        if clip_dim:  # ComfyUI hard-codes the 1280-wide ViT-H features; the tiny CLIP is 32 wide
            cmodel.MLPProj.__init__ = lambda self, i, o, _d=clip_dim, **kw: orig_mlp(self, _d, o, **kw)
        else:
            cmodel.MLPProj.__init__ = orig_mlp
        model = cmodel.WanModel(model_type="i2v" if clip_dim else "t2v", in_dim=cfg["in_channels"],
                                dim=cfg["num_attention_heads"] * cfg["attention_head_dim"], ffn_dim=cfg["ffn_dim"],
                                freq_dim=cfg["freq_dim"], text_dim=cfg["text_dim"], out_dim=cfg["out_channels"],
                                num_heads=cfg["num_attention_heads"], num_layers=cfg["num_layers"],
                                operations=ops).eval()
        roles = ["transformer", "transformer_2"] if variant == "2.2" else ["transformer"]
        for role in roles:
            sd = load_file(str(files[role]))
            model.load_state_dict(sd, strict=True)  # ComfyUI reads the kit's names and shapes
            x, t, context, clip = inputs(variant, cfg["in_channels"], cfg["text_dim"], clip_dim)
            with torch.no_grad():
                y = model(x, t, context, clip_fea=clip)
            out["transformers"][f"{variant}/{role}"] = {
                "file": files[role].name, "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
                "out": _slice(y)}
    cmodel.MLPProj.__init__ = orig_mlp

    for name, variant, z, spatial in (("2.1", "2.2", 16, 8), ("2.2", "2.2-ti2v", 48, 16)):
        files = tiny.tiny_wan_comfy_files(variant=variant)
        vc = tiny.WAN_VAE if name == "2.1" else tiny.WAN22_VAE
        if name == "2.1":
            vae = cvae.WanVAE(dim=vc["base_dim"], z_dim=z, dim_mult=vc["dim_mult"], num_res_blocks=vc["num_res_blocks"],
                              attn_scales=[], temperal_downsample=vc["temperal_downsample"], dropout=0.0)
        else:
            vae = cvae22.WanVAE(dim=vc["base_dim"], dec_dim=vc["decoder_base_dim"], z_dim=z, dim_mult=vc["dim_mult"],
                                num_res_blocks=vc["num_res_blocks"], attn_scales=[],
                                temperal_downsample=vc["temperal_downsample"], dropout=0.0)
        vae.load_state_dict(load_file(str(files["vae"])), strict=True)
        vae.eval()
        video, latent = vae_inputs(z, spatial)
        with torch.no_grad():
            # raw latent (mean/std live in ComfyUI's latent format); clamped as comfy.sd.VAE's process_output does
            dec = vae.decode(latent).clamp(-1, 1)
            enc = vae.encode(video)  # the posterior mean
        out["vae"][name] = {"file": files["vae"].name, "keys": {k: list(v.shape) for k, v in vae.state_dict().items()},
                            "decode": _slice(dec), "encode": _slice(enc)}

    (HERE / "wan_comfy_golden.json").write_text(json.dumps(out, indent=1))
    print("wrote", HERE / "wan_comfy_golden.json")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/comfy/ComfyUI")
