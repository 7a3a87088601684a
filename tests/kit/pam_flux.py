"""A tiny PAM appearance pair (two XLabs Flux ControlNets, 6-channel hints) in the released key layout, written
from x-flux's names by hand (not from the pack's module), and the inputs of its golden residuals."""
import torch

PREFIXES = ("controlnet1.", "controlnet2.")  # PAM's DoubleControl state dict


def xflux_layout(D=64, heads=2, depth=2, vec=8, ctx=16, mlp=128, hint=6) -> dict:
    """{key: shape} of one x-flux ControlNetFlux (src/flux/controlnet.py + modules/layers.py), written out by hand."""
    hd = D // heads
    out = {"img_in.weight": (D, 64), "img_in.bias": (D,), "txt_in.weight": (D, ctx), "txt_in.bias": (D,),
           "pos_embed_input.weight": (D, 64), "pos_embed_input.bias": (D,)}
    for name, i in (("time_in", 256), ("vector_in", vec), ("guidance_in", 256)):
        out.update({f"{name}.in_layer.weight": (D, i), f"{name}.in_layer.bias": (D,),
                    f"{name}.out_layer.weight": (D, D), f"{name}.out_layer.bias": (D,)})
    for b in range(depth):
        for s in ("img", "txt"):
            p = f"double_blocks.{b}.{s}"
            out.update({f"{p}_mod.lin.weight": (6 * D, D), f"{p}_mod.lin.bias": (6 * D,),
                        f"{p}_attn.qkv.weight": (3 * D, D), f"{p}_attn.qkv.bias": (3 * D,),
                        f"{p}_attn.norm.query_norm.scale": (hd,), f"{p}_attn.norm.key_norm.scale": (hd,),
                        f"{p}_attn.proj.weight": (D, D), f"{p}_attn.proj.bias": (D,),
                        f"{p}_mlp.0.weight": (mlp, D), f"{p}_mlp.0.bias": (mlp,),
                        f"{p}_mlp.2.weight": (D, mlp), f"{p}_mlp.2.bias": (D,)})
        out.update({f"controlnet_blocks.{b}.weight": (D, D), f"controlnet_blocks.{b}.bias": (D,)})
    for j in range(8):  # Conv2d at 0, 2, ..., 14 (SiLU between)
        out.update({f"input_hint_block.{2 * j}.weight": (16, hint if j == 0 else 16, 3, 3),
                    f"input_hint_block.{2 * j}.bias": (16,)})
    return out


def released_state(seed=0, **kw) -> dict:
    """A trained-looking DoubleControl state: every tensor random (the zero-init parts too)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix in PREFIXES:
        for k, shape in sorted(xflux_layout(**kw).items()):
            sd[prefix + k] = 0.2 * torch.randn(shape, generator=g)
    return sd


def golden_inputs():
    g = torch.Generator().manual_seed(7)
    return dict(x=torch.randn(1, 16, 4, 6, generator=g), hint=torch.rand(1, 6, 32, 48, generator=g),
                context=torch.randn(1, 5, 16, generator=g), y=torch.randn(1, 8, generator=g),
                timesteps=torch.tensor([0.7]), guidance=torch.tensor([4.0]))
