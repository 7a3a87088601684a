"""Write comfyui_residuals.safetensors: ComfyUI's own XLabs ControlNetFlux on the tiny released PAM pair.

    python tests/golden/pam_flux/make_golden.py /path/to/ComfyUI     (any venv with ComfyUI's requirements)

ComfyUI's class hard-codes a 3-channel hint conv; its first conv is replaced by a 6-channel one (what PAM's
appearance stage needs, spec §4.3), then the pair's weights are loaded strictly and run on the test's inputs.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent


def main(comfyui: str) -> None:
    sys.path.insert(0, comfyui)
    sys.path.insert(0, str(HERE.parents[1]))  # tests/: kit
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.ops
    from comfy.ldm.flux.controlnet import ControlNetFlux

    from kit.pam_flux import PREFIXES, golden_inputs, released_state

    sd = released_state()
    out = {}
    for prefix, name in zip(PREFIXES, ("physical", "semantic")):
        ref = ControlNetFlux(operations=comfy.ops.disable_weight_init, image_model="flux", in_channels=16,
                             out_channels=16, vec_in_dim=8, context_in_dim=16, hidden_size=64, mlp_ratio=2.0,
                             num_heads=2, depth=2, depth_single_blocks=0, axes_dim=[4, 14, 14], theta=10000,
                             qkv_bias=True, guidance_embed=True, patch_size=2)
        ref.input_hint_block[0] = torch.nn.Conv2d(6, 16, 3, padding=1)
        ref.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
        with torch.no_grad():
            res = ref(**golden_inputs())["input"]
        out.update({f"{name}.{i}": res[i].contiguous() for i in range(2)})
    save_file(out, str(HERE / "comfyui_residuals.safetensors"),
              metadata={"source": "ComfyUI comfy.ldm.flux.controlnet.ControlNetFlux", "comfyui": comfyui})
    print("wrote", HERE / "comfyui_residuals.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
