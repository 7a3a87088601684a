"""MATRIX nodes: first-frame ID maps, prompt markup and Inter-GenEval scores (spec seed-004).

The engine is models/conditions/id_map.py, matrix_prompt.py, latent_inputs.py, models/control/matrix_*.py,
models/training/matrix.py and models/metrics_matrix.py; these nodes validate, convert and call. Sampling reuses the
CogVideoX Sampler: the MATRIX Loader's backbone takes the ID map through its 'inputs' (ID Map Input), and capture
and guidance join its 'controls' chain.
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
# Attention capture, the visualiser, the MATRIX loader, guidance, layer analysis and training: they call
# models/control/matrix_capture.py, matrix_guidance.py, matrix_view.py, matrix_analysis.py and models/training/matrix.py.
_LAYERS_TIP = ("'all', or block indices and ranges ('7,11-12'); CogVideoX-5B has 0..41 (the paper's dominant layers: "
               "v2t 7, 11; v2v 12).")
MATRIX_PREFIX = "interplay/"


def matrix_choices() -> list[str]:
    """MATRIX weights files: every loras/ entry (as the LoRA Loader lists them; a file without MATRIX metadata is
    refused by name when loaded), then interplay/ entries whose header has interplay_matrix metadata (training writes
    state files and other weights there too)."""
    from ..models import runtime
    from ..models.training.matrix import META
    from ._choices import header_metadata

    out = list(runtime.list_models("loras"))
    out += [MATRIX_PREFIX + f for f in runtime.list_models("interplay") if META in header_metadata("interplay", f)]
    return out


def _spans(node: str, spans_json: str):
    """The Matrix Prompt's spans JSON -> PromptTokens (token positions required)."""
    try:
        d = json.loads(spans_json)
    except json.JSONDecodeError as ex:
        raise ValueError(f"{node}: 'spans_json' is not JSON ({ex.msg}); connect the Matrix Prompt node's spans_json") \
            from None
    if not isinstance(d, dict) or d.get("v") != 1 or "ids" not in d:
        raise ValueError(f"{node}: 'spans_json' is not the Matrix Prompt's output (a {{\"v\": 1, \"ids\": ...}} object)")
    if d["ids"] and any("tokens" not in e for e in d["ids"].values()):
        raise ValueError(f"{node}: 'spans_json' has no token positions; connect the backbone to the Matrix Prompt node "
                         "so it tokenizes with the model's tokenizer")
    ids = {int(k): list(e.get("tokens", [])) for k, e in d["ids"].items()}
    inter = [{"sub_id": int(i["sub"]), "obj_id": int(i["obj"]), "sub": ids.get(int(i["sub"]), []),
              "obj": ids.get(int(i["obj"]), []), "verb": list(i.get("verb_tokens", []))} for i in d["interactions"]]
    return d, P.PromptTokens(ids=ids, interactions=inter, input_ids=[], max_length=int(d.get("max_length", 226)))


def _word_tokens(node: str, backbone, text: str, words: str, max_length: int) -> dict:
    """{word: token positions} of each comma-separated word's occurrences in the prompt text."""
    import re

    out = {}
    for w in [x.strip() for x in words.split(",") if x.strip()]:
        spans = [(m.start(), m.end()) for m in re.finditer(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)]
        if not spans:
            raise ValueError(f"{node}: the word {w!r} is not in the prompt {text[:80]!r}; list words of the prompt")
        mp = P.MatrixPrompt(text=text, markup="paper_spans", entities={w: spans})
        out[w] = P.token_sets(mp, backbone.tokenizer, max_length, where=node).ids[w]
    return out


class InterplayMatrixAttentionCapture:
    DESCRIPTION = ("Capture attention maps while a sampler runs (MATRIX analysis, spec §2): per chosen layer, the "
                   "heads' mean video-to-text map of each ID's tokens and of each interaction's verb (from the Matrix "
                   "Prompt's spans), and the video-to-video map of each ID's first-frame region (from the ID map), "
                   "computed blockwise and averaged over the chosen steps. Connect 'controls' to the sampler's "
                   "controls and the 'attention' to MATRIX Attention View / MATRIX AAS (with the sampler's frames, "
                   "so they run after it). The video is unchanged.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_CONTROLS", "INTERPLAY_ATTENTION")
    RETURN_NAMES = ("controls", "attention")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The backbone the sampler runs (its layers and family)."}),
            "spans_json": ("STRING", {"forceInput": True, "tooltip": "From the Matrix Prompt node (with its backbone "
                                                                     "connected, so it holds token positions)."}),
            "layers": ("STRING", {"default": "all", "tooltip": "Layers to capture. " + _LAYERS_TIP}),
            "steps": ("STRING", {"default": "all", "tooltip": "Sampler steps to average (0-based): 'all' or e.g. "
                                                              "'0-24' or '0,10,20'."}),
            "mode": (["softmax", "logits"], {"default": "softmax", "tooltip": (
                "softmax: attention probabilities, slices of one softmax over all keys, never renormalised (what "
                "AAS scores); logits: pre-softmax q.k (the training read-out).")}),
            "head_reduce": (["mean", "sum"], {"default": "mean", "tooltip": "How heads combine (sum = heads x mean)."}),
        }, "optional": {
            "id_map": ("INTERPLAY_ID_MAP", {"tooltip": "Instances' first-frame masks: the v2v query regions (from ID "
                                                       "Map). Without it only v2t maps are captured."}),
            "words": ("STRING", {"default": "", "tooltip": "Extra words of the prompt to map (comma-separated), shown "
                                                          "as 'word:<w>' maps."}),
            "controls": ("INTERPLAY_CONTROLS", {"tooltip": "Controls chained before this capture."}),
        }}

    def build(self, backbone, spans_json, layers, steps, mode, head_reduce, id_map=None, words="", controls=None):
        from ..models.control import matrix_capture as C
        from ..models.control.base import ControlStack, bind

        node = "MATRIX Attention Capture"
        d, toks = _spans(node, spans_json)
        idx = C.parse_layers(layers, backbone, f"{node}: 'layers'")
        word_sets = _word_tokens(node, backbone, d["text"], words, toks.max_length) if words.strip() else {}
        masks = id_map.masks[:, 0] if id_map is not None and id_map.num_slots else None
        targets = C.MapTargets.from_prompt(toks, masks, words=word_sets)
        if not targets.v2t and not targets.v2v:
            raise ValueError(f"{node}: nothing to capture: the prompt has no marked IDs or verbs and no ID map is "
                             "connected. Mark the prompt up ('[the red box](1) [pushes](1>2) [the cup](2)').")
        sess = C.CaptureSession(idx, idx, targets, steps=C.parse_steps(steps, f"{node}: 'steps'"), mode=mode,
                                head_reduce=head_reduce)
        stack = controls if controls is not None else ControlStack()
        stack = stack.then(bind(C.session_branch(sess, backbone.family), None, where=node))
        text = (f"captures {len(targets.v2t)} v2t map(s) {sorted(targets.v2t)} and {len(targets.v2v)} v2v map(s) "
                f"{sorted(targets.v2v)} on {len(idx)} layer(s)")
        return {"ui": {"text": [text]}, "result": (stack, sess)}


def _pick(node: str, cap, layer: int, map_name: str):
    """(map [T,h,w], label): one layer's map, or the mean over the captured layers for layer -1."""
    import torch as _t

    kinds = {"v2t": cap.names("v2t"), "v2v": cap.names("v2v")}
    if map_name.strip().lower() in ("", "auto"):
        kind = "v2t" if kinds["v2t"] else "v2v"
        name = kinds[kind][0]
    else:
        kind, _, name = map_name.strip().partition(":")
        if kind not in kinds or not name:
            raise ValueError(f"{node}: 'map' must be 'auto' or '<v2t|v2v>:<name>', e.g. 'v2t:id1'; got {map_name!r}")
        if name not in kinds[kind]:
            have = [f"{k}:{n}" for k, ns in kinds.items() for n in ns]
            raise ValueError(f"{node}: no {kind} map {name!r} was captured; captured: {', '.join(have)}")
    layers = [ln for ln in cap.layers if (ln, kind, name) in cap.maps]
    if layer < 0:
        return _t.stack([cap.get(ln, kind, name) for ln in layers]).mean(0), f"{kind}:{name}, mean of {len(layers)} layers"
    from ..models.control.matrix_capture import layer_index

    pick = [ln for ln in layers if layer_index(ln) == layer]
    if not pick:
        raise ValueError(f"{node}: layer {layer} was not captured; captured: {[layer_index(ln) for ln in layers]}")
    return cap.get(pick[0], kind, name), f"{kind}:{name}, layer {layer}"


class InterplayMatrixAttentionView:
    DESCRIPTION = ("Overlay a captured attention map on the generated video as a heat map: a word's or an ID's "
                   "video-to-text attention, or the propagation of an ID's first-frame region (video-to-video). "
                   "Latent frame i covers video frames 4i-3..4i, frame 0 alone.")
    CATEGORY = "Interplay/video"
    FUNCTION = "view"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention": ("INTERPLAY_ATTENTION", {"tooltip": "From MATRIX Attention Capture."}),
            "frames": ("IMAGE", {"tooltip": "The sampler's frames (the video the capture was made with)."}),
            "map": ("STRING", {"default": "auto", "tooltip": "'v2t:id1', 'v2t:verb1>2', 'v2t:word:cup', 'v2v:id2'; "
                                                           "auto: the first captured map."}),
            "layer": ("INT", {"default": -1, "min": -1, "max": 255, "tooltip": "Layer index; -1: the mean over the "
                                                                               "captured layers."}),
            "alpha": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Heat map opacity."}),
            "normalise": (["video", "frame"], {"default": "video", "tooltip": "One colour scale for the clip (shows "
                                                                              "when attention is strong) or per frame."}),
            "resize": (["bilinear", "nearest"], {"default": "bilinear", "tooltip": "nearest shows the token blocks."}),
        }}

    def view(self, attention, frames, map, layer, alpha, normalise, resize):
        from ..models.control import matrix_view as V

        node = "MATRIX Attention View"
        cap = attention.result()
        m, label = _pick(node, cap, int(layer), map)
        out = V.overlay(frames, m, alpha=float(alpha), how=normalise, temporal=_temporal(attention), resize=resize)
        have = [f"{k}:{n}" for k in ("v2t", "v2v") for n in cap.names(k)]
        return {"ui": {"text": [f"{label}; steps {cap.steps}; maps: {', '.join(have)}"]}, "result": (out,)}


def _temporal(session) -> int:
    return int(getattr(session, "temporal", 4))


class InterplayMatrixAAS:
    DESCRIPTION = ("Attention Alignment Score (spec §2.4) of every captured map against the instances' mask tracks: "
                   "the attention mass inside the track at token resolution (masks NEAREST to the token grid, latent "
                   "frame i = OR of video frames 4i-3..4i), per layer; id<k> maps score against track k, verb<k>><j> "
                   "against the union of k and j.")
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "score"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "INT", "FLOAT")
    RETURN_NAMES = ("report_json", "best_layer", "best_aas")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention": ("INTERPLAY_ATTENTION", {"tooltip": "From MATRIX Attention Capture."}),
            "frames": ("IMAGE", {"tooltip": "The sampler's frames (orders this node after the sampler; sets the size "
                                            "the tracks are fitted to)."}),
            "id_map": ("INTERPLAY_ID_MAP", {"tooltip": "The instances' mask tracks of the generated video (ID Map from "
                                                       "SAM2 Propagate tracks, or a sandbox scene)."}),
            "kind": (["v2t", "v2v"], {"default": "v2t", "tooltip": "Which maps pick the best layer."}),
        }}

    def score(self, attention, frames, id_map, kind):
        from ..models.control.matrix_capture import aas_report

        node = "MATRIX AAS"
        cap = attention.result()
        tracks = id_map.masks
        if tracks.shape[1] != frames.shape[0]:
            if tracks.shape[1] != 1:
                raise ValueError(f"{node}: the ID map's tracks have {tracks.shape[1]} frames, the video "
                                 f"{frames.shape[0]}; give the tracks of the generated video")
            tracks = tracks.expand(-1, frames.shape[0], -1, -1)  # a first-frame map: a static track
        from ..models.video_io import fit_nearest

        tracks = fit_nearest(tracks, frames.shape[1], frames.shape[2])
        rep = aas_report(cap, tracks, attention.stride or 16, _temporal(attention))
        means = {li: d.get(kind) for li, d in rep["mean"].items() if d.get(kind) is not None}
        if not means:
            raise ValueError(f"{node}: no {kind} map with a target was captured")
        best = max(means, key=means.get)
        text = f"{kind} AAS by layer: " + ", ".join(f"{li}: {v:.4g}" for li, v in means.items()) + f"; best {best}"
        return {"ui": {"text": [text]}, "result": (json.dumps(rep), int(best), float(means[best]))}


class InterplayMatrixGuidance:
    DESCRIPTION = ("MATRIX training-free guidance (spec App. D) for the sampler's controls: CAG zeroes cross-frame "
                   "video-to-video attention, CMG the video-to-text and text-to-video attention, after the softmax "
                   "and without renormalising, at the interaction-dominant layers, on an extra perturbed pass; the "
                   "step adds scale x (cond - perturbed) on top of CFG, as PAG does. Works on a plain backbone (no "
                   "MATRIX weights). Chain two for both. Scale 0 is off (no extra pass). The sampler's control "
                   "weight does not scale it; its step range applies.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_CONTROLS",)
    RETURN_NAMES = ("controls",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The backbone the sampler runs (family and layers)."}),
            "mode": (["cag", "cmg"], {"default": "cmg", "tooltip": "cag: cross-frame propagation (v2v layers); cmg: "
                                                                  "cross-modal grounding (v2t layers)."}),
            "layers": ("STRING", {"default": "default", "tooltip": "default: CMG 7, 11 and CAG 12 for CogVideoX-5B "
                                                                   "(Wan: 20, 24 / 6, 8), or the last layer of a "
                                                                   "smaller model. " + _LAYERS_TIP}),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "Guidance scale s (not stated in the paper; PAG uses 3). Large values saturate attention and "
                "collapse diversity.")}),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Fraction of the steps before it starts (the paper: every step)."}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "Fraction of the steps after which it stops."}),
        }, "optional": {
            "controls": ("INTERPLAY_CONTROLS", {"tooltip": "Controls chained before this one."}),
        }}

    def build(self, backbone, mode, layers, scale, start, end, controls=None):
        from ..models.control import matrix_capture as C
        from ..models.control import matrix_guidance as G
        from ..models.control.base import ControlStack, bind

        node = "MATRIX Guidance"
        n = C.num_layers(backbone)
        if layers.strip().lower() in ("", "default"):
            idx = list(G.default_layers(backbone.family, mode, n))
        else:
            idx = C.parse_layers(layers, backbone, f"{node}: 'layers'")
        br = G.guidance_branch(backbone.family, mode, idx, float(scale))
        stack = (controls if controls is not None else ControlStack()).then(
            bind(br, None, 1.0, float(start), float(end), where=node))
        return {"ui": {"text": [f"{mode.upper()} on layers {idx}, scale {scale:g}" + (" (off)" if scale == 0 else "")]},
                "result": (stack,)}


class InterplayMatrixIdMapInput:
    DESCRIPTION = ("Give a first-frame ID map to a MATRIX model: the sampler fits it to the generation size like "
                   "the image (NEAREST: no new colours), VAE-encodes it as a one-frame video and feeds it to the "
                   "widened input channels. An all-black map is allowed (the model then gets no instance guidance) "
                   "and is reported.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_LATENT_INPUTS",)
    RETURN_NAMES = ("inputs",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {
            "id_map": ("INTERPLAY_ID_MAP", {"tooltip": "From ID Map or ID Map From Image."}),
            "image": ("IMAGE", {"tooltip": "Or a palette picture (its first image), used as it is."}),
            "inputs": ("INTERPLAY_LATENT_INPUTS", {"tooltip": "Other latent inputs chained before this one."}),
        }}

    def build(self, id_map=None, image=None, inputs=None):
        from ..models.conditions.latent_inputs import LatentInputs

        node = "ID Map Input"
        if (id_map is None) == (image is None):
            raise ValueError(f"{node}: connect exactly one of 'id_map' and 'image'")
        pic = id_map.image if id_map is not None else image[:1, ..., :3]
        out = (inputs if inputs is not None else LatentInputs()).then("id_map", pic, "nearest")
        black = bool(pic.max() <= 1.0 / 255)
        text = ("WARNING: the ID map is all black (no instance); the MATRIX model runs without instance guidance."
                if black else f"ID map {pic.shape[2]}x{pic.shape[1]}"
                + (f", IDs {id_map.ids}" if id_map is not None else ""))
        return {"ui": {"text": [text]}, "result": (out,)}


class InterplayMatrixLoader:
    DESCRIPTION = ("Put trained MATRIX weights on a backbone: the input projection widened for the ID map (its "
                   "trained weights), and the LoRA of the preset's layers at a strength (default the preset's: 1.0 "
                   "paper, 0.5 code). The input backbone is not changed. Sample with the CogVideoX Sampler and an ID "
                   "Map Input on its 'inputs'.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE",)
    RETURN_NAMES = ("backbone",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The backbone MATRIX was trained on."}),
            "matrix": (matrix_choices(), {"tooltip": "A MATRIX file (Train MATRIX writes interplay/<run>/"
                                                     "checkpoint.safetensors), in interplay/ or loras/.",
                                          "model_folder": ["interplay", "loras"], "interplay_path": "model"}),
            "strength": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 4.0, "step": 0.05, "tooltip": (
                "LoRA strength; -1: the preset's (1.0 paper, 0.5 code). The projection always applies.")}),
        }}

    def load(self, backbone, matrix, strength):
        from ..models import runtime
        from ..models.training.matrix import load_matrix

        node = "MATRIX Loader"
        if not matrix:
            raise ValueError(f"{node}: no MATRIX file picked; train one with Train MATRIX (interplay/<run>/"
                             "checkpoint.safetensors)")
        path = (runtime.model_path("interplay", matrix[len(MATRIX_PREFIX):]) if matrix.startswith(MATRIX_PREFIX)
                else runtime.model_path("loras", matrix))
        try:
            bb = load_matrix(backbone, path, None if strength < 0 else float(strength))
        except (ValueError, FileNotFoundError) as ex:
            raise type(ex)(f"{node}: {ex}") from ex
        info = bb.extra["matrix"]
        return {"ui": {"text": [f"MATRIX {info['preset']} preset, LoRA strength {info['strength']:g}, input layout "
                                f"{[n for n, _ in bb.layout.parts]}"]}, "result": (bb,)}


class InterplayMatrixLayerAnalysis:
    DESCRIPTION = ("Rank a backbone's attention layers for interaction (spec §2.5) over a sandbox-format dataset "
                   "with mask tracks: each clip is reconstructed at a few noise levels with attention capture on "
                   "every chosen layer; per layer the AAS against the tracks (noun / verb x v2t / v2v); the paper's "
                   "top-k frequency + magnitude rank sum gives the influential layers, and with success labels the "
                   "success-failure separation gives the dominant ones.")
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "analyse"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("report_json", "table")

    @classmethod
    def INPUT_TYPES(cls):
        from ..models.control.matrix_analysis import DEFAULT_TIMESTEPS

        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "CogVideoX (a MATRIX model too)."}),
            "dataset_dir": ("STRING", {"default": "sandbox/multi", "interplay_path": "folder",
                                       "tooltip": "Sandbox-format clips with masks and captions (e.g. the 'multi' "
                                       "preset): under input/ or output/."}),
            "layers": ("STRING", {"default": "all", "tooltip": _LAYERS_TIP}),
            "timesteps": ("STRING", {"default": ",".join(str(t) for t in DEFAULT_TIMESTEPS),
                                     "tooltip": "Noise levels (0..999) each clip is reconstructed at."}),
            "max_videos": ("INT", {"default": 50, "min": 1, "max": 100000, "tooltip": "First N clips (the paper "
                                                                                       "used 50)."}),
            "top_k": ("INT", {"default": 10, "min": 1, "max": 256, "tooltip": "Per-video top-k (frequency)."}),
            "influential": ("INT", {"default": 10, "min": 1, "max": 256, "tooltip": "Influential layers to keep."}),
        }, "optional": {
            "success_json": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "{\"clip name\": true|false, ...}: human success labels for the dominant layers.")}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "First F frames (0: all; 8k+1)."}),
        }}

    def analyse(self, backbone, dataset_dir, layers, timesteps, max_videos, top_k, influential, success_json="",
                frames=0):
        from ..models.control import matrix_analysis as MA
        from ..models.control.matrix_capture import parse_layers
        from .training import resolve_dataset

        node = "MATRIX Layer Analysis"
        root = resolve_dataset(node, dataset_dir)
        try:
            steps = [int(t) for t in timesteps.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"{node}: 'timesteps' must be comma-separated numbers 0..999; got {timesteps!r}") from None
        if not steps or any(not 0 <= t < 1000 for t in steps):
            raise ValueError(f"{node}: 'timesteps' must be numbers in 0..999; got {timesteps!r}")
        success = None
        if success_json.strip():
            try:
                success = {str(k): bool(v) for k, v in json.loads(success_json).items()}
            except (json.JSONDecodeError, AttributeError):
                raise ValueError(f"{node}: 'success_json' must be a JSON object {{clip name: true|false}}") from None
        vids = MA.videos_from_dataset(root, frames=frames or None, max_videos=max_videos)
        rep = MA.analyse(backbone, vids, parse_layers(layers, backbone, f"{node}: 'layers'"), timesteps=steps,
                         success=success, top_k=top_k, n_influential=influential)
        table = MA.table_text(rep)
        return {"ui": {"text": [table]}, "result": (json.dumps(rep), table)}


class InterplayTrainMatrix:
    DESCRIPTION = ("Train MATRIX on a frozen CogVideoX I2V backbone from a sandbox-format dataset with mask tracks "
                   "(e.g. the 'multi' preset): a peft LoRA on the preset's layers, the input projection widened for "
                   "the first-frame ID map, and the attention decoders, with L_DM + lambda_SGA L_SGA + lambda_SPA "
                   "L_SPA from the captured attention of the v2t / v2v layers. Presets: paper (CogVideoX-5B: layers "
                   "7, 11 / 12, r128, BCE + Dice + L2) and code (the public code's recipe: r16, BCE with capped "
                   "pos_weight, per-ID maps). Writes one file (LoRA + projection + decoders + preset) to "
                   "models/interplay/<output_name>/, resumable; outputs the backbone with MATRIX applied.")
    CATEGORY = "Interplay/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INTERPLAY_BACKBONE", "IMAGE", "STRING")
    RETURN_NAMES = ("backbone", "loss_curve", "checkpoint")

    @classmethod
    def INPUT_TYPES(cls):
        from .training import COMMON_TAIL, TRAIN_INPUTS, _common_inputs

        common = _common_inputs("matrix")
        common["dataset_dir"] = ("STRING", {**common["dataset_dir"][1], "default": "sandbox/multi"})
        train = dict(TRAIN_INPUTS)
        train["steps"] = ("INT", {"default": 4000, "min": 1, "max": 1_000_000, "tooltip": "Optimizer steps (the "
                                                                                          "paper: about 4000)."})
        train["lr"] = ("FLOAT", {"default": 1e-5, "min": 1e-8, "max": 1.0, "step": 1e-6, "tooltip": (
            "Learning rate of the LoRA (not stated in the paper; the public code: 1e-5). The schedule and weight "
            "decay follow the preset (paper: cosine).")})
        return {"required": {
            **common,
            "preset": (["paper", "code"], {"default": "paper", "tooltip": "The recipe; every field below overrides "
                                                                         "it."}),
            "v2t_layers": ("STRING", {"default": "preset", "tooltip": "SGA layers: 'preset' (paper 7, 11; code 20, "
                                                                      "24) or indices for this model."}),
            "v2v_layers": ("STRING", {"default": "preset", "tooltip": "SPA layers: 'preset' (paper 12; code 6, 8) or "
                                                                      "indices. The layer analysis finds them."}),
            "lora_rank": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "0: the preset's (128 paper, 16 "
                                                                                  "code)."}),
            "lambda_sga": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 100.0, "step": 0.001,
                                     "tooltip": "SGA weight (0: off). Paper and code: 0.01."}),
            "lambda_spa": ("FLOAT", {"default": 0.005, "min": 0.0, "max": 100.0, "step": 0.001,
                                     "tooltip": "SPA weight (0: off). Paper and code: 0.005."}),
            **train,
        }, "optional": dict(COMMON_TAIL)}

    def train(self, backbone, dataset_dir, output_name, frames, preset, v2t_layers, v2v_layers, lora_rank,
              lambda_sga, lambda_spa, steps, lr, batch_size, grad_accum, precision, seed, checkpoint_every, resume,
              extra=""):
        from ..models.training.alignment import get_preset
        from ..models.training.config import build_task
        from .training import (_check_options, _dataset, _run, _train_config, output_folder, parse_extra,
                               resolve_dataset)

        node = "Train MATRIX"
        data, out = resolve_dataset(node, dataset_dir), output_folder(node, output_name)  # paths first
        opts, tr, dse = parse_extra(node, extra)
        _check_options(node, "matrix_lora", opts)
        opts.update(preset=preset, lambda_sga=float(lambda_sga), lambda_spa=float(lambda_spa))
        for name, v in (("v2t_layers", v2t_layers), ("v2v_layers", v2v_layers)):
            if v.strip().lower() not in ("", "preset"):
                opts[name] = v
        if lora_rank:
            opts["lora_rank"] = int(lora_rank)
        pr = get_preset(preset)
        cfg = _train_config(node, {**_base(steps, lr, batch_size, grad_accum, precision, seed, checkpoint_every),
                                   "schedule": pr.lr_schedule, "weight_decay": pr.weight_decay}, tr)
        ds = _dataset(node, data, frames, dse)
        if getattr(backbone, "family", None) not in ("cogvideox", "wan"):
            raise ValueError(f"{node}: MATRIX trains CogVideoX (paper preset) or Wan I2V (code preset); got "
                             f"{getattr(backbone, 'family', type(backbone).__name__)}")
        t = build_task("matrix_lora", backbone, opts)
        res, curve, text = _run(t, ds, cfg, out, resume, "matrix_lora")
        bb = t.output()
        return {"ui": {"text": [text + f" (last terms {t.last_terms})" if t.last_terms else text]},
                "result": (bb, curve, str(res.checkpoint))}


def _base(steps, lr, batch_size, grad_accum, precision, seed, checkpoint_every) -> dict:
    from .training import _base_train

    return _base_train(steps, lr, batch_size, grad_accum, precision, seed, checkpoint_every)


NODE_CLASS_MAPPINGS = {
    "InterplayMatrixIdMap": InterplayMatrixIdMap,
    "InterplayMatrixIdMapFromImage": InterplayMatrixIdMapFromImage,
    "InterplayMatrixPrompt": InterplayMatrixPrompt,
    "InterplayMatrixInterGenEval": InterplayMatrixInterGenEval,
    "InterplayMatrixAttentionCapture": InterplayMatrixAttentionCapture,
    "InterplayMatrixAttentionView": InterplayMatrixAttentionView,
    "InterplayMatrixAAS": InterplayMatrixAAS,
    "InterplayMatrixGuidance": InterplayMatrixGuidance,
    "InterplayMatrixIdMapInput": InterplayMatrixIdMapInput,
    "InterplayMatrixLoader": InterplayMatrixLoader,
    "InterplayMatrixLayerAnalysis": InterplayMatrixLayerAnalysis,
    "InterplayTrainMatrix": InterplayTrainMatrix,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayMatrixIdMap": "ID Map (Interplay)",
    "InterplayMatrixIdMapFromImage": "ID Map From Image (Interplay)",
    "InterplayMatrixPrompt": "Matrix Prompt (Interplay)",
    "InterplayMatrixInterGenEval": "Inter-GenEval Score (Interplay)",
    "InterplayMatrixAttentionCapture": "MATRIX Attention Capture (Interplay)",
    "InterplayMatrixAttentionView": "MATRIX Attention View (Interplay)",
    "InterplayMatrixAAS": "MATRIX AAS (Interplay)",
    "InterplayMatrixGuidance": "MATRIX Guidance (Interplay)",
    "InterplayMatrixIdMapInput": "ID Map Input (Interplay)",
    "InterplayMatrixLoader": "MATRIX Loader (Interplay)",
    "InterplayMatrixLayerAnalysis": "MATRIX Layer Analysis (Interplay)",
    "InterplayTrainMatrix": "Train MATRIX (Interplay)",
}
