"""The sampler calls the parallel-sampling test runs in one process (the reference) and in each process of a
2-process gloo launch (tests/models/sampling/parallel_worker.py): tiny Wan2.2 A14B and CogVideoX-I2V bundles from
the kit, 9 frames (3 latent frames: an uneven 2 + 1 split over 2 processes), a few steps with CFG."""
import torch
from kit import tiny

from interplay.models.backbones import cogvideox as cog
from interplay.models.backbones.base import Attachment
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


class MemoryKV(Attachment):
    """A stand-in for a causal sampler's KV cache: extra keys/values (M tokens of earlier blocks) joined to every
    self-attention's own, as a cache joins them. Under sequence parallelism each process holds its share of the
    tokens (``part`` of ``parts``), exactly what a cache storing the k/v its slot receives ends up holding."""

    frame_shards = True

    def __init__(self, part: int = 0, parts: int = 1, tokens: int = 7, heads: int = 2, dim: int = 16):
        g = torch.Generator().manual_seed(11)
        k, v = torch.randn(2, 1, heads, tokens, dim, generator=g)
        sizes = [tokens // parts + (i < tokens % parts) for i in range(parts)]  # uneven: 4 + 3
        a = sum(sizes[:part])
        self.k, self.v = k[:, :, a:a + sizes[part]], v[:, :, a:a + sizes[part]]

    def attention_layers(self, ctx):
        return [n for n in wan.attention_layers(ctx.bb, ctx.extra.get("expert")) if n.endswith(".attn1")]

    def attention(self, ctx, layer, q, k, v, call):
        b = k.shape[0]
        return call(q, torch.cat([self.k.expand(b, -1, -1, -1), k], dim=2),
                    torch.cat([self.v.expand(b, -1, -1, -1), v], dim=2))


def run_wan(parallel="off", engine="auto", memory=None, cfg_low_noise=None):
    bb = wan_bundle()
    pos, neg = wan.encode_prompt(bb, ["a red box"]), wan.encode_prompt(bb, [""])
    steps = 3 if cfg_low_noise is None else 4  # 4 steps: 2 on the low-noise expert, one row each without CFG
    return SW.sample_wan(bb, _image(), pos, neg, num_frames=9, steps=steps, cfg=3.5, seed=2, parallel=parallel,
                         parallel_engine=engine, attachments=[memory] if memory is not None else (),
                         cfg_low_noise=cfg_low_noise)


def run_cog(parallel="off", engine="auto", learned_positions=False, control=False):
    bb = cog_bundle(learned_positions)
    pos, neg = cog.encode_prompt(bb, ["a red cube slides right"]), cog.encode_prompt(bb, [""])
    kw = dict(controls=[_control()], branch=_branch(bb), control_cfg=2.0) if control else {}
    return SC.sample_cogvideox(bb, _image(), pos, neg, num_frames=9, steps=3, cfg=6.0, seed=3, parallel=parallel,
                               parallel_engine=engine, **kw)


def cases(engines, rank: int = 0):
    """name -> a zero-argument call; the same names in the reference and in the launch (``rank``: this process)."""
    out = {"wan_cfg": lambda: run_wan("cfg"),
           "cog_cfg_control": lambda: run_cog("cfg", control=True),
           "wan_sequence_cache": lambda: run_wan("sequence", memory=MemoryKV(rank, 2)),
           "wan_cfg_one_row": lambda: run_wan("cfg", cfg_low_noise=1.0)}
    for e in engines:
        out[f"wan_sequence_{e}"] = lambda e=e: run_wan("sequence", e)
        out[f"cog_sequence_{e}"] = lambda e=e: run_cog("sequence", e)
        out[f"cog_sequence_positions_{e}"] = lambda e=e: run_cog("sequence", e, learned_positions=True)
    return out


def reference(name: str):
    """The one-process output a case must equal."""
    if name.startswith("wan"):
        return run_wan(memory=MemoryKV() if "cache" in name else None,
                       cfg_low_noise=1.0 if "one_row" in name else None)
    return run_cog(learned_positions="positions" in name, control="control" in name)
