"""The sampler calls the parallel-sampling test runs in one process (the reference) and in each process of a
2-process gloo launch (tests/models/sampling/parallel_worker.py): tiny Wan2.2 A14B and CogVideoX-I2V bundles from
the kit, 9 frames (3 latent frames: an uneven 2 + 1 split over 2 processes), a few steps with CFG."""
import torch
from kit import tiny

from interplay.models.backbones import cogvideox as cog
from interplay.models.backbones import wan
from interplay.models.control import kinemask as km
from interplay.models.control.base import ControlSignal
from interplay.models.sampling import cogvideox as SC
from interplay.models.sampling import wan as SW


def _image(size=32, seed=5):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def wan_bundle():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


def cog_bundle(learned_positions: bool = False):
    bb = cog.load_cogvideox(tiny.tiny_cogvideox_dir(), dtype=torch.float32, device="cpu")
    if learned_positions:  # a positional table over the frames, as CogVideoX-5B-I2V's (random values)
        from diffusers import CogVideoXTransformer3DModel

        cfg = dict(bb.denoiser.config)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        cfg.update(use_learned_positional_embeddings=True)
        torch.manual_seed(0)
        tr = CogVideoXTransformer3DModel(**cfg).eval()
        tr.load_state_dict(bb.denoiser.state_dict(), strict=False)
        with torch.no_grad():
            tr.patch_embed.pos_embedding.normal_(generator=torch.Generator().manual_seed(9))
        bb = bb.replace(denoiser=tr)
    return bb


def _branch(bb):
    br = km.new_branch(bb.denoiser, num_layers=1, downscale=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lin in br.module.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
    br.module.requires_grad_(False)
    return br


def _control():
    v = torch.zeros(9, 32, 32, 3)
    v[0, 8:20, 8:20, 0] = 0.9
    return ControlSignal(video=v, kind="velocity", weight=0.5)


def run_wan(parallel="off", engine="auto"):
    bb = wan_bundle()
    pos, neg = wan.encode_prompt(bb, ["a red box"]), wan.encode_prompt(bb, [""])
    return SW.sample_wan(bb, _image(), pos, neg, num_frames=9, steps=3, cfg=3.5, seed=2, parallel=parallel,
                         parallel_engine=engine)


def run_cog(parallel="off", engine="auto", learned_positions=False, control=False):
    bb = cog_bundle(learned_positions)
    pos, neg = cog.encode_prompt(bb, ["a red cube slides right"]), cog.encode_prompt(bb, [""])
    kw = dict(controls=[_control()], branch=_branch(bb), control_cfg=2.0) if control else {}
    return SC.sample_cogvideox(bb, _image(), pos, neg, num_frames=9, steps=3, cfg=6.0, seed=3, parallel=parallel,
                               parallel_engine=engine, **kw)


def cases(engines):
    """name -> a zero-argument call; the same names in the reference and in the launch."""
    out = {"wan_cfg": lambda: run_wan("cfg"),
           "cog_cfg_control": lambda: run_cog("cfg", control=True)}
    for e in engines:
        out[f"wan_sequence_{e}"] = lambda e=e: run_wan("sequence", e)
        out[f"cog_sequence_{e}"] = lambda e=e: run_cog("sequence", e)
        out[f"cog_sequence_positions_{e}"] = lambda e=e: run_cog("sequence", e, learned_positions=True)
    return out


def reference(name: str):
    """The one-process output a case must equal."""
    if name.startswith("wan"):
        return run_wan()
    return run_cog(learned_positions="positions" in name, control="control" in name)
