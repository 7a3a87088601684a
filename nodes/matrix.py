"""MATRIX nodes: first-frame ID maps, prompt markup and Inter-GenEval scores (spec seed-004).

The engine is models/conditions/id_map.py, models/conditions/matrix_prompt.py and models/metrics_matrix.py; these
nodes validate, convert and call. The attention capture, visualiser, sampler and training nodes go in the last
section of this file.
"""
from __future__ import annotations

import json

import torch

from ..models import metrics_matrix as G
from ..models.conditions import id_map as I
from ..models.conditions import matrix_prompt as P

_PALETTE_TIP = ("Colours as JSON, background first: [[0,0,0],[255,0,0],...]. Empty: the default palette "
                "(background black, id1 red, id2 green, id3 blue, id4 yellow, id5 magenta). A trained MATRIX model "
                "expects the palette it was trained with.")


def _legend(idm: I.IdMap) -> str:
    names = I.PALETTE_NAMES if idm.palette == I.PALETTE else [str(c) for c in idm.palette]
    rows = []
    for k in range(1, idm.num_slots + 1):
        state = "" if k in idm.ids else " (absent from frame 0)"
        label = f": {idm.labels[k - 1]}" if idm.labels and idm.labels[k - 1] else ""
        rows.append(f"id{k} = {names[k]}{label}{state}")
    return "\n".join(rows)


def _masks_tensor(mask: torch.Tensor, node: str, name: str) -> torch.Tensor:
    m = mask if mask.ndim == 3 else mask[None] if mask.ndim == 2 else None
    if m is None:
        raise ValueError(f"{node}: '{name}' must be a MASK [F,H,W] or [H,W]; got shape {tuple(mask.shape)}")
    return m.detach().float().cpu()


# ================================================================================================ conditions
class InterplayMatrixIdMap:
    DESCRIPTION = ("MATRIX's first-frame ID map: up to 5 instance masks painted in a fixed palette (the picture the "
                   "model is conditioned on), plus the instances' mask tracks for training and analysis. Give the "
                   "instances as mask_1..mask_5 (each a MASK of one instance: one frame, or a video from SAM2 "
                   "propagation), or as one MASK batch with one frame per instance, or as a sandbox scene. An "
                   "all-black map (no instance in frame 0) is allowed with a warning.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("IMAGE", "INTERPLAY_ID_MAP", "STRING")
    RETURN_NAMES = ("id_map_image", "id_map", "legend")

    @classmethod
    def INPUT_TYPES(cls):
        mask_tip = ("Mask of instance {k} (ID {k}): [F,H,W] (a track, e.g. from SAM2 Propagate; frame 0 goes into "
                    "the map) or one frame.")
        return {"required": {
            "overlap": (list(I.OVERLAP_RULES), {"default": "higher_id", "tooltip": (
                "Where instances overlap: higher_id paints the higher ID on top; smaller_on_top paints the smaller "
                "mask on top (ties: the higher ID).")}),
            "palette": ("STRING", {"default": "", "tooltip": _PALETTE_TIP}),
        }, "optional": {
            **{f"mask_{k}": ("MASK", {"tooltip": mask_tip.format(k=k)}) for k in range(1, I.MAX_IDS + 1)},
            "masks": ("MASK", {"tooltip": "All instances of one frame as a MASK batch [K,H,W]: frame i is ID i+1 "
                                          "(at most 5). Used instead of mask_1..mask_5."}),
            "scene": ("INTERPLAY_SCENE", {"tooltip": "A sandbox scene (e.g. the 'multi' preset): its objects' masks "
                                                     "become the IDs, chosen by 'objects'."}),
            "objects": ("STRING", {"default": "auto", "tooltip": (
                "With a scene: which objects become IDs, as 1-based object numbers in ID order, e.g. '2,1'. auto: "
                "every object when there are at most 5, else the driven ones and those they collide with.")}),
            "labels": ("STRING", {"default": "", "tooltip": "Optional names per ID, comma-separated ('man in blue, "
                                                            "red cup'); a scene names its objects itself."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": (
                "Resize the map and the tracks to this width (NEAREST: no new colours). 0 keeps the masks' size; "
                "it should match the first frame given to the sampler.")}),
            "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                               "tooltip": "Resize height (see width); 0 keeps the masks' size."}),
        }}

    def build(self, overlap, palette, mask_1=None, mask_2=None, mask_3=None, mask_4=None, mask_5=None, masks=None,
              scene=None, objects="auto", labels="", width=0, height=0):
        node = "InterplayMatrixIdMap"
        singles = [m for m in (mask_1, mask_2, mask_3, mask_4, mask_5)]
        given = [name for name, v in (("mask_1..mask_5", any(m is not None for m in singles)),
                                      ("masks", masks is not None), ("scene", scene is not None)) if v]
        if len(given) != 1:
            raise ValueError(f"{node}: connect exactly one source of instances (mask_1..mask_5, masks or scene); got "
                             f"{', '.join(given) if given else 'none'}.")
        names: tuple = tuple(s.strip() for s in labels.split(",")) if labels.strip() else ()
        if scene is not None:
            tracks, names = I.masks_from_scene(scene, objects, where=node)
        elif masks is not None:
            tracks = _masks_tensor(masks, node, "masks")[:, None] >= 0.5
        else:
            last = max(i for i, m in enumerate(singles) if m is not None) + 1
            ms = [None if m is None else _masks_tensor(m, node, f"mask_{i + 1}") for i, m in enumerate(singles[:last])]
            ref = next(m for m in ms if m is not None)
            for i, m in enumerate(ms):
                if m is not None and m.shape[-2:] != ref.shape[-2:]:
                    raise ValueError(f"{node}: 'mask_{i + 1}' is {tuple(m.shape[-2:])} but the other masks are "
                                     f"{tuple(ref.shape[-2:])}; expected one size. Fix: resize the masks together.")
            frames = max(m.shape[0] for m in ms if m is not None)
            for i, m in enumerate(ms):
                if m is not None and m.shape[0] not in (1, frames):
                    raise ValueError(f"{node}: 'mask_{i + 1}' has {m.shape[0]} frames, another mask {frames}; "
                                     "expected equal lengths (or one frame).")
            # an unconnected slot before a connected one is an absent ID: an empty track
            tracks = torch.stack([torch.zeros(frames, *ref.shape[-2:], dtype=torch.bool) if m is None
                                  else (m >= 0.5).expand(frames, -1, -1) for m in ms])
        if tracks.shape[0] > I.MAX_IDS:
            raise ValueError(f"{node}: {tracks.shape[0]} instances given; MATRIX takes at most {I.MAX_IDS}. Fix: keep "
                             "the instances of the interaction.")
        if (width > 0) != (height > 0):
            raise ValueError(f"{node}: set both 'width' and 'height' (or both 0 to keep the size); got "
                             f"{width}x{height}")
        if width > 0:
            tracks = I.resize_nearest(tracks, (int(height), int(width)))
        idm = I.build_id_map(tracks, palette, overlap, names, where=node)
        legend = _legend(idm)
        text = legend
        if idm.is_empty:
            text = ("WARNING: the ID map is all black: no instance is visible in frame 0. The model runs without "
                    "instance guidance.\n" + legend)
        return {"ui": {"text": [text]}, "result": (idm.image, idm, legend)}


class InterplayMatrixIdMapFromImage:
    DESCRIPTION = ("Read a palette ID-map picture (e.g. a MATRIX-11K 'merged/000.png', or a map painted in any "
                   "editor) back into per-ID masks: every pixel takes the nearest palette colour, so mild "
                   "compression noise is absorbed; pixels far from every colour count as background and are "
                   "reported.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "read"
    RETURN_TYPES = ("MASK", "INTERPLAY_ID_MAP", "IMAGE")
    RETURN_NAMES = ("masks", "id_map", "id_map_image")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The palette picture (its first frame is read)."}),
            "palette": ("STRING", {"default": "", "tooltip": _PALETTE_TIP}),
            "max_distance": ("FLOAT", {"default": I.MAX_DISTANCE, "min": 0.0, "max": 442.0, "step": 1.0,
                                       "tooltip": "Largest RGB distance (0..255 units) from a palette colour that "
                                                  "still counts as that colour; the default palette's colours are "
                                                  "at least 255 apart."}),
        }, "optional": {
            "num_ids": ("INT", {"default": 0, "min": 0, "max": I.MAX_IDS, "tooltip": (
                "How many ID slots to return (masks[i] = ID i+1, empty when absent). 0: every ID of the palette "
                "(at most 5).")}),
        }}

    def read(self, image, palette, max_distance, num_ids=0):
        node = "InterplayMatrixIdMapFromImage"
        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(f"{node}: 'image' must be an IMAGE [B,H,W,3]; got shape {tuple(image.shape)}")
        pal = I.parse_palette(palette, where=node)
        idm, unmatched = I.id_map_from_image(image[0, ..., :3].float().cpu(), pal, max_distance,
                                             num_ids if num_ids > 0 else None)
        total = image.shape[1] * image.shape[2]
        text = f"IDs found: {idm.ids or 'none'}; unmatched pixels: {unmatched} of {total}"
        if unmatched > 0.01 * total:
            text += (f"\nWARNING: {100 * unmatched / total:.1f}% of the pixels match no palette colour within "
                     f"{max_distance:g}; check the palette (or raise max_distance for a heavily compressed picture).")
        if idm.is_empty:
            text += "\nWARNING: the map is all black (no ID present)."
        return {"ui": {"text": [text]}, "result": (idm.masks[:, 0].float(), idm, idm.image)}


class InterplayMatrixPrompt:
    DESCRIPTION = ("MATRIX prompt markup -> the prompt for the text encoder and the token spans that attention "
                   "capture, SGA training and the layer analysis read. Paper markup: '[the red box](1) [pushes](1>2) "
                   "[the blue cylinder](2)' marks entity phrases of IDs and verbs of subject>object; code markup: "
                   "'a <id1> box pushes the <id2> cylinder'. With a backbone the spans are also given as token "
                   "positions of its tokenizer (by character offsets).")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "prepare"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "spans_json")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompt": ("STRING", {"multiline": True, "default": "[the red box](1) [pushes](1>2) [the blue cylinder](2)"
                                                                " to the left.",
                                  "tooltip": "The prompt with MATRIX markup (see the description)."}),
            "markup": (list(P.MARKUPS), {"default": "auto", "tooltip": (
                "paper_spans: [phrase](k) entities and [verb](k>j) interactions (the paper's roles); id_tags: "
                "<id1>..<id5> before the nouns (the public code). auto: whichever appears.")}),
            "id_tags": (["auto", *P.ID_TAG_MODES], {"default": "auto", "tooltip": (
                "How <idk> tags reach the encoder. tokens: as 5 added tokens, whose ids fall in the text encoder's "
                "untrained padding rows (T5-v1.1-xxl has 28 spare rows); words: tags removed, each marks the word "
                "after it. auto: tokens when the encoder has room, else words.")}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "Its tokenizer gives token positions; its text encoder's "
                                                           "embedding size decides whether tags fit as tokens."}),
            "max_length": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": (
                "Encoder sequence length; spans cut off by truncation are reported. 0: the backbone's (226 for "
                "CogVideoX, 512 for Wan).")}),
            "drop_determiners": ("BOOLEAN", {"default": True, "tooltip": (
                "Leave a/an/the/... out of entity token sets, as the paper's example 'red cup' -> {red, cup}.")}),
        }}

    def prepare(self, prompt, markup, id_tags, backbone=None, max_length=0, drop_determiners=True):
        node = "InterplayMatrixPrompt"
        tok, rows = None, None
        length = int(max_length) or 226
        if backbone is not None:
            tok = backbone.tokenizer
            if tok is None:
                raise ValueError(f"{node}: the backbone has no tokenizer; load one with its text encoder, or leave "
                                 "'backbone' unconnected for character spans only.")
            if backbone.text_encoder is not None:
                rows = P.embedding_rows(backbone.text_encoder)
            if not max_length:
                cfg = getattr(backbone.denoiser, "config", None)
                length = int(getattr(cfg, "max_text_seq_length", 0) or (512 if backbone.family == "wan" else 226))
        mp, tokens, _ = P.prepare(prompt, tok, markup=markup, id_tags=id_tags, max_length=length, rows=rows,
                                  drop_determiners=drop_determiners, where=node)
        spans = P.spans_json(mp, tokens)
        lines = [f"markup {mp.markup}" + (f" ({mp.id_tags})" if mp.markup == "id_tags" else "")
                 + f"; IDs {sorted(mp.entities) or 'none'}; interactions "
                 + (", ".join(f"{i['sub']}>{i['obj']}" for i in mp.interactions) or "none")]
        if not mp.entities:
            lines.append("WARNING: no markup found; the prompt has no spans for SGA or attention maps.")
        if tokens is not None and tokens.truncated:
            lines.append(f"WARNING: truncated at {length} tokens: {', '.join(tokens.truncated)} lost tokens.")
        if mp.markup == "id_tags" and mp.id_tags == "tokens" and mp.entities:
            lines.append("Note: <idk> tags are encoded as added tokens; the encoder must use the tag-extended "
                         "tokenizer (their embedding rows are untrained padding).")
        return {"ui": {"text": ["\n".join(lines)]}, "result": (mp.text, spans)}


# ================================================================================================ evaluation
class InterplayMatrixInterGenEval:
    DESCRIPTION = ("Inter-GenEval scores from a judge's answers (any VLM, a person, or the public code's files): "
                   "KISA_raw = yes among Q1-Q6 / 6 and SGI_raw = yes among Q7-Q10 / 4 per key interaction, SPI = "
                   "mean of 1 - 5 x emergence rate and 1 - 5 x disappearance rate over the judge frames after frame "
                   "0, KISA = KISA_raw x SPI, SGI = SGI_raw x SPI, IF = (KISA + SGI) / 2, averaged over videos.")
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "score"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report_json", "KISA", "SGI", "IF", "SPI")

    @classmethod
    def INPUT_TYPES(cls):
        example = json.dumps({"videos": [{"id": "clip0", "interactions": [["yes"] * 10],
                                          "emergence": [False] * 10, "disappearance": [False] * 10}]})
        return {"required": {
            "answers_json": ("STRING", {"multiline": True, "default": example, "tooltip": (
                "{\"videos\": [{\"id\", \"interactions\": [[10 answers per key interaction: yes / no / no (visually "
                "implausible)]], \"emergence\": [a flag per analysed frame], \"disappearance\": [...]}]}. The public "
                "code's 'items' / 'hallucination_results' records are read too.")}),
        }, "optional": {
            "lam": ("FLOAT", {"default": G.LAMBDA, "min": 0.0, "max": 100.0, "step": 0.5,
                              "tooltip": "The SPI penalty per unit rate (5 in the paper)."}),
        }}

    def score(self, answers_json, lam=G.LAMBDA):
        report = G.score_videos(answers_json, lam=lam, where="InterplayMatrixInterGenEval")
        m = report["mean"]
        text = (f"{len(report['videos'])} video(s): KISA {m['KISA']:.3f}, SGI {m['SGI']:.3f}, IF {m['IF']:.3f} "
                f"(KISA_raw {m['KISA_raw']:.3f}, SGI_raw {m['SGI_raw']:.3f}, SPI {m['SPI']:.3f})")
        return {"ui": {"text": [text]},
                "result": (json.dumps(report), float(m["KISA"]), float(m["SGI"]), float(m["IF"]), float(m["SPI"]))}


# ================================================================================================ capture, training
# Attention capture, the visualiser, the MATRIX sampler and the training node are added here by the lead (they need
# the backbone forward contract); they call models/control/matrix.py and models/training/alignment.py.


NODE_CLASS_MAPPINGS = {
    "InterplayMatrixIdMap": InterplayMatrixIdMap,
    "InterplayMatrixIdMapFromImage": InterplayMatrixIdMapFromImage,
    "InterplayMatrixPrompt": InterplayMatrixPrompt,
    "InterplayMatrixInterGenEval": InterplayMatrixInterGenEval,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayMatrixIdMap": "ID Map (Interplay)",
    "InterplayMatrixIdMapFromImage": "ID Map From Image (Interplay)",
    "InterplayMatrixPrompt": "Matrix Prompt (Interplay)",
    "InterplayMatrixInterGenEval": "Inter-GenEval Score (Interplay)",
}
