"""Streaming decode of Wan latents: latent frames decoded as they arrive (a causal sampler's blocks), the VAE's causal
convolution cache carried from one call to the next.

The Wan VAE decodes one latent frame at a time, each causal 3-D convolution keeping the last frames it saw in a
cache list (diffusers' ``AutoencoderKLWan._decode``: ``clear_cache()``, then ``decoder(x[:, :, i:i+1],
feat_cache=..., feat_idx=[0], first_chunk=i == 0)`` per frame). :class:`StreamDecoder` runs the same loop but keeps
its own cache list between calls, so decoding blocks one after another gives exactly the frames of decoding the
whole latent video at once (tested bitwise on the CPU): latent frame 0 gives 1 frame, every later one 4. The cache
is a list of tensors, None or the marker string "Rep" (diffusers' own), which :meth:`state` / :meth:`load_state`
turn into tensors and a manifest for a session snapshot. Tiling is not used (the per-frame decode is what bounds
memory here).
"""
from __future__ import annotations

import torch

from .base import Backbone, on_device


class StreamDecoder:
    """Decode normalised Wan latents [B, C, f, h, w] block by block (see the module docstring)."""

    def __init__(self, bb: Backbone):
        self.bb = bb
        self.cache: list | None = None
        self.frames_in = 0  # latent frames decoded so far

    def reset(self) -> None:
        self.cache, self.frames_in = None, 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """-> frames [B, F, H, W, 3] float32 0..1 on the CPU (F = 1 + 4(f-1) for the first call, 4f after)."""
        from .wan import raw_latents

        vae = self.bb.vae
        with on_device(self.bb, vae):
            p = next(vae.parameters())
            z = raw_latents(self.bb, latents.to(p.device, torch.float32)).to(p.dtype)
            if self.cache is None:
                vae.clear_cache()
                self.cache = [None] * len(vae._feat_map)
            x = vae.post_quant_conv(z)
            outs = []
            for i in range(x.shape[2]):
                outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                        first_chunk=self.frames_in == 0))
                self.frames_in += 1
            out = torch.cat(outs, 2)
            if vae.config.patch_size is not None:
                from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

                out = unpatchify(out, patch_size=vae.config.patch_size)
            out = torch.clamp(out, min=-1.0, max=1.0).float().cpu()
        return ((out + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).contiguous()

    # ------------------------------------------------------------------------------------------- state
    def state(self, prefix: str = "decoder.") -> tuple[dict, dict]:
        """(tensors {prefix + index: tensor}, manifest) of the cache, for a snapshot."""
        tensors, kinds = {}, []
        for i, c in enumerate(self.cache or []):
            if isinstance(c, torch.Tensor):
                tensors[f"{prefix}{i}"] = c.detach().cpu().contiguous()
                kinds.append("t")
            else:
                kinds.append("rep" if c == "Rep" else "none")
        return tensors, {"frames_in": self.frames_in, "cache": kinds if self.cache is not None else None}

    def load_state(self, tensors: dict, manifest: dict, prefix: str = "decoder.") -> None:
        kinds = manifest.get("cache")
        self.frames_in = int(manifest.get("frames_in", 0))
        if kinds is None:
            self.cache = None
            return
        dev = next(self.bb.vae.parameters()).device
        out = []
        for i, k in enumerate(kinds):
            if k == "t":
                out.append(tensors[f"{prefix}{i}"].to(dev))
            else:
                out.append("Rep" if k == "rep" else None)
        self.cache = out
