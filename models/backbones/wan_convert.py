"""Wan state-dict layouts: ComfyUI-native (the original Wan release names, what the Comfy-Org repackaged files in
``diffusion_models/`` and ``vae/`` hold) <-> diffusers (``WanTransformer3DModel``, ``AutoencoderKLWan``).

Only names change, never values or shapes: every map here is a bijection on the keys of one architecture, and a
key no rule explains maps to None (the loader then reports it as unexpected instead of guessing).

Transformer (native -> diffusers), per block ``blocks.<i>.``: ``self_attn.{q,k,v,o}`` -> ``attn1.{to_q,to_k,to_v,
to_out.0}``, ``cross_attn.*`` -> ``attn2.*`` (+ ``k_img``/``v_img``/``norm_k_img`` -> ``add_k_proj``/``add_v_proj``/
``norm_added_k``, the CLIP branch of Wan2.1 I2V), ``norm3`` (the cross-attention norm) -> ``norm2``, ``ffn.{0,2}`` ->
``ffn.net.{0.proj,2}``, ``modulation`` -> ``scale_shift_table``; top level ``text_embedding.{0,2}``,
``time_embedding.{0,2}``, ``time_projection.1`` -> ``condition_embedder.*``, ``head.head`` -> ``proj_out``,
``head.modulation`` -> ``scale_shift_table``, ``img_emb.proj.{0,1,3,4}`` -> ``condition_embedder.image_embedder.
{norm1,ff.net.0.proj,ff.net.2,norm2}``, ``img_emb.emb_pos`` -> ``...image_embedder.pos_embed``.

VAE 2.1 (also Wan2.2-A14B's): ``encoder.conv1``/``decoder.conv1`` -> ``conv_in``, top ``conv1``/``conv2`` ->
``quant_conv``/``post_quant_conv``, ``head.{0,2}`` -> ``norm_out``/``conv_out``, ``middle.{0,1,2}`` -> ``mid_block.
{resnets.0,attentions.0,resnets.1}``, residual blocks ``residual.{0,2,3,6}``/``shortcut`` -> ``norm1``/``conv1``/
``norm2``/``conv2``/``conv_shortcut``. The encoder's ``downsamples.<j>`` keep their flat index; the decoder's flat
``upsamples.<j>`` are regrouped into ``up_blocks.<b>.resnets.<r>`` with each resample closing a block
(``upsamplers.0``).
VAE 2.2 (TI2V-5B, 48 channels): the same leaf names, grouped already: ``encoder.downsamples.<b>.downsamples.<r>``
-> ``encoder.down_blocks.<b>.resnets.<r>`` (a resample there -> ``downsampler``), ``decoder.upsamples.<b>.
upsamples.<r>`` -> ``decoder.up_blocks.<b>.resnets.<r>`` (resample -> ``upsampler``).

Text encoder (umT5) and CLIP vision files use the Hugging Face names already (``encoder.block.<i>.layer.0.
SelfAttention.q.weight``, ``vision_model.*``); ComfyUI adds ``spiece_model`` (the SentencePiece model as bytes) to
umT5 files. "Scaled" fp8 files (ComfyUI's ``*_fp8_scaled``) add a ``scaled_fp8`` marker and, per Linear, a scalar
``<layer>.scale_weight`` (true weight = fp8 weight x scale) and sometimes ``<layer>.scale_input`` (only used by fp8
matmul kernels); :func:`split_scaled_fp8` separates them from the weights.
"""
from __future__ import annotations

import re

# ------------------------------------------------------------------------------------------ transformer
# (native, diffusers) templates; {i} a block index, {p} weight|bias
_TRANSFORMER_RULES = [
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("img_emb.proj.0.{p}", "condition_embedder.image_embedder.norm1.{p}"),
    ("img_emb.proj.1.{p}", "condition_embedder.image_embedder.ff.net.0.proj.{p}"),
    ("img_emb.proj.3.{p}", "condition_embedder.image_embedder.ff.net.2.{p}"),
    ("img_emb.proj.4.{p}", "condition_embedder.image_embedder.norm2.{p}"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("blocks.{i}.norm3.{p}", "blocks.{i}.norm2.{p}"),
    ("blocks.{i}.ffn.0.{p}", "blocks.{i}.ffn.net.0.proj.{p}"),
    ("blocks.{i}.ffn.2.{p}", "blocks.{i}.ffn.net.2.{p}"),
]
for _nat, _dif in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    for _a, _b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
        _TRANSFORMER_RULES.append((f"blocks.{{i}}.{_nat}.{_a}.{{p}}", f"blocks.{{i}}.{_dif}.{_b}.{{p}}"))
    for _a in ("norm_q", "norm_k"):
        _TRANSFORMER_RULES.append((f"blocks.{{i}}.{_nat}.{_a}.{{p}}", f"blocks.{{i}}.{_dif}.{_a}.{{p}}"))
_TRANSFORMER_RULES += [
    ("blocks.{i}.cross_attn.k_img.{p}", "blocks.{i}.attn2.add_k_proj.{p}"),
    ("blocks.{i}.cross_attn.v_img.{p}", "blocks.{i}.attn2.add_v_proj.{p}"),
    ("blocks.{i}.cross_attn.norm_k_img.{p}", "blocks.{i}.attn2.norm_added_k.{p}"),
]


def _compile(template: str) -> re.Pattern:
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx + r"\Z")


_T_TO_DIFF = [(_compile(n), d) for n, d in _TRANSFORMER_RULES]
_T_TO_NATIVE = [(_compile(d), n) for n, d in _TRANSFORMER_RULES]


def _apply(rules, key: str) -> str | None:
    for rx, out in rules:
        m = rx.match(key)
        if m:
            return out.format(**m.groupdict())
    return None


def transformer_key_to_diffusers(key: str) -> str | None:
    """The diffusers name of a native (ComfyUI / original Wan) transformer key, or None if no rule explains it."""
    return _apply(_T_TO_DIFF, key)


def transformer_key_to_native(key: str) -> str | None:
    """The native name of a diffusers ``WanTransformer3DModel`` key, or None."""
    return _apply(_T_TO_NATIVE, key)


# ------------------------------------------------------------------------------------------------- VAE
def _resnet_leaf_to_diffusers(leaf: str) -> str | None:
    for a, b in (("residual.0.gamma", "norm1.gamma"), ("residual.3.gamma", "norm2.gamma")):
        if leaf == a:
            return b
    m = re.fullmatch(r"(residual\.2|residual\.6|shortcut)\.(weight|bias)", leaf)
    if m:
        return {"residual.2": "conv1", "residual.6": "conv2", "shortcut": "conv_shortcut"}[m[1]] + "." + m[2]
    return None


def _resnet_leaf_to_native(leaf: str) -> str | None:
    for a, b in (("norm1.gamma", "residual.0.gamma"), ("norm2.gamma", "residual.3.gamma")):
        if leaf == a:
            return b
    m = re.fullmatch(r"(conv1|conv2|conv_shortcut)\.(weight|bias)", leaf)
    if m:
        return {"conv1": "residual.2", "conv2": "residual.6", "conv_shortcut": "shortcut"}[m[1]] + "." + m[2]
    return None


_RESAMPLE_LEAF = re.compile(r"(resample\.1|time_conv)\.(weight|bias)\Z")
_ATTN_LEAF = re.compile(r"(norm\.gamma|(to_qkv|proj)\.(weight|bias))\Z")


def _common_vae(key: str) -> str | None:
    fixed = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
             "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"(encoder|decoder)\.(conv1|head\.0|head\.2)\.(weight|bias|gamma)", key)
    if m:
        return f"{m[1]}." + {"conv1": "conv_in", "head.0": "norm_out", "head.2": "conv_out"}[m[2]] + f".{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.middle\.([012])\.(.+)", key)
    if m:
        if m[2] == "1":
            return f"{m[1]}.mid_block.attentions.0.{m[3]}" if _ATTN_LEAF.match(m[3]) else None
        leaf = _resnet_leaf_to_diffusers(m[3])
        return f"{m[1]}.mid_block.resnets.{0 if m[2] == '0' else 1}.{leaf}" if leaf else None
    return None


def vae_keys_to_diffusers(keys) -> dict[str, str | None]:
    """{native key: diffusers key or None} for one VAE file (2.1 or 2.2 layout, told apart by its keys)."""
    keys = list(keys)
    out: dict[str, str | None] = {}
    # 2.1 decoder: flat upsamples.<j>; each resample closes an up block (the last block has none)
    flat = sorted({int(m[1]) for k in keys if (m := re.match(r"decoder\.upsamples\.(\d+)\.(residual|shortcut|resample|"
                                                             r"time_conv)", k))})
    resample_at = {int(m[1]) for k in keys if (m := re.match(r"decoder\.upsamples\.(\d+)\.(resample|time_conv)", k))}
    slot, b, r = {}, 0, 0
    for j in flat:
        if j in resample_at:
            slot[j] = (b, None)
            b, r = b + 1, 0
        else:
            slot[j] = (b, r)
            r += 1
    for k in keys:
        new = _common_vae(k)
        if new is None and (m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.+)", k)):  # 2.2
            leaf = m[3]
            if _RESAMPLE_LEAF.match(leaf):
                new = f"encoder.down_blocks.{m[1]}.downsampler.{leaf}"
            elif (lf := _resnet_leaf_to_diffusers(leaf)):
                new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{lf}"
        elif new is None and (m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)", k)):  # 2.2
            leaf = m[3]
            if _RESAMPLE_LEAF.match(leaf):
                new = f"decoder.up_blocks.{m[1]}.upsampler.{leaf}"
            elif (lf := _resnet_leaf_to_diffusers(leaf)):
                new = f"decoder.up_blocks.{m[1]}.resnets.{m[2]}.{lf}"
        elif new is None and (m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", k)):  # 2.1, flat
            leaf = m[2]
            if _RESAMPLE_LEAF.match(leaf):
                new = f"encoder.down_blocks.{m[1]}.{leaf}"
            elif (lf := _resnet_leaf_to_diffusers(leaf)):
                new = f"encoder.down_blocks.{m[1]}.{lf}"
        elif new is None and (m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", k)):  # 2.1, flat
            bb, rr = slot.get(int(m[1]), (None, None))
            leaf = m[2]
            if bb is not None and rr is None and _RESAMPLE_LEAF.match(leaf):
                new = f"decoder.up_blocks.{bb}.upsamplers.0.{leaf}"
            elif bb is not None and rr is not None and (lf := _resnet_leaf_to_diffusers(leaf)):
                new = f"decoder.up_blocks.{bb}.resnets.{rr}.{lf}"
        out[k] = new
    return out


def vae_keys_to_native(keys) -> dict[str, str | None]:
    """{diffusers key: native key or None}: the inverse of :func:`vae_keys_to_diffusers`."""
    keys = list(keys)
    inverse_common = {}
    for k in keys:
        for cand in _native_candidates_common(k):
            if _common_vae(cand) == k:
                inverse_common[k] = cand
    residual = any(".downsampler." in k or ".upsampler." in k or re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k)
                   for k in keys)
    # 2.1 decoder: flat index of up_blocks.<b>.{resnets.<r>|upsamplers.0}
    n_res, has_up = {}, set()
    for k in keys:
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", k):
            n_res[int(m[1])] = max(n_res.get(int(m[1]), 0), int(m[2]) + 1)
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", k):
            has_up.add(int(m[1]))
    offset, base = {}, 0
    for b in sorted(set(n_res) | has_up):
        offset[b] = base
        base += n_res.get(b, 0) + (1 if b in has_up else 0)
    out: dict[str, str | None] = {}
    for k in keys:
        new = inverse_common.get(k)
        if new is None and residual:
            if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
                lf = _resnet_leaf_to_native(m[3])
                new = f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{lf}" if lf else None
            elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)", k):
                n = sum(1 for x in keys if re.match(rf"encoder\.down_blocks\.{m[1]}\.resnets\.\d+\.norm1\.gamma\Z", x))
                new = f"encoder.downsamples.{m[1]}.downsamples.{n}.{m[2]}" if _RESAMPLE_LEAF.match(m[2]) else None
            elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
                lf = _resnet_leaf_to_native(m[3])
                new = f"decoder.upsamples.{m[1]}.upsamples.{m[2]}.{lf}" if lf else None
            elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsampler\.(.+)", k):
                n = n_res.get(int(m[1]), 0)
                new = f"decoder.upsamples.{m[1]}.upsamples.{n}.{m[2]}" if _RESAMPLE_LEAF.match(m[2]) else None
        elif new is None:
            if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", k):
                if _RESAMPLE_LEAF.match(m[2]):
                    new = f"encoder.downsamples.{m[1]}.{m[2]}"
                elif lf := _resnet_leaf_to_native(m[2]):
                    new = f"encoder.downsamples.{m[1]}.{lf}"
            elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
                lf = _resnet_leaf_to_native(m[3])
                new = f"decoder.upsamples.{offset[int(m[1])] + int(m[2])}.{lf}" if lf else None
            elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", k):
                b = int(m[1])
                new = (f"decoder.upsamples.{offset[b] + n_res.get(b, 0)}.{m[2]}"
                       if _RESAMPLE_LEAF.match(m[2]) else None)
        out[k] = new
    return out


def _native_candidates_common(key: str):
    """Native keys whose :func:`_common_vae` image could be ``key`` (the fixed top/middle/head names)."""
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    m = re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key)
    if m:
        yield f"{fixed[m[1]]}.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(weight|bias|gamma)", key)
    if m:
        yield f"{m[1]}." + {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}[m[2]] + f".{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        yield f"{m[1]}.middle.1.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key)
    if m and (lf := _resnet_leaf_to_native(m[3])):
        yield f"{m[1]}.middle.{0 if m[2] == '0' else 2}.{lf}"


# ------------------------------------------------------------------------------------------ scaled fp8
SCALED_FP8_MARKER = "scaled_fp8"


def split_scaled_fp8(names) -> tuple[list[str], dict[str, str], list[str]]:
    """Sort a file's keys into (weights, {weight key: its scale key}, ignored keys).

    ``<layer>.scale_weight`` belongs to ``<layer>.weight``; the ``scaled_fp8`` marker and ``<layer>.scale_input``
    (an input scale only fp8 matmul kernels use) are ignored; so is ``spiece_model`` (the tokenizer, read apart)."""
    names = list(names)
    scales, ignored, weights = {}, [], []
    for k in names:
        if k == SCALED_FP8_MARKER or k.endswith("." + SCALED_FP8_MARKER) or k.endswith(".scale_input") \
                or k == "spiece_model":
            ignored.append(k)
        elif k.endswith(".scale_weight"):
            scales[k[: -len("scale_weight")] + "weight"] = k
        else:
            weights.append(k)
    return weights, scales, ignored
