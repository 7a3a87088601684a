"""MATRIX's first-frame ID map and the mask tracks it comes from (spec seed-004 §3.1, §2.4).

The ID map I0 is the palette-indexed aggregation of up to five per-instance binary masks of the first frame: each
instance ID k keeps one fixed colour and the background is black. The model sees it as a picture (VAE-encoded like
the I2V image), so the palette is part of a trained model's contract and is configurable.

Default palette (neither the paper nor the public code fixes one; the order follows the public InterGenEval box
colours): background (0,0,0); id1 red (255,0,0); id2 green (0,255,0); id3 blue (0,0,255); id4 yellow (255,255,0);
id5 magenta (255,0,255).

Overlaps (also unstated): ``higher_id`` paints a higher ID over a lower one; ``smaller_on_top`` paints the smaller
mask (fewer pixels in that frame) over the larger one, ties going to the higher ID.

Layouts: instance masks are ``[K, F, H, W]`` (or ``[K, H, W]`` for one frame), ID k is ``masks[k-1]``; an empty
slot is an absent ID. Index maps are int64 with 0 = background and k = ID k.

Mask tracks at latent resolution (the analysis mapping of the public code, used for AAS and v2v queries): every
pixel frame is resized NEAREST to (H/s, W/s) (torch's ``nearest``, which samples pixel (s*i, s*j) like cv2's
INTER_NEAREST for integer factors) and thresholded > 0.5; then latent frame 0 <- pixel frame 0 and latent frame
i >= 1 <- OR of pixel frames 4i-3 .. 4i. ``s`` is the VAE's spatial factor times the patch size
(``LATENT_FACTORS``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
PALETTE_NAMES = ("background", "red", "green", "blue", "yellow", "magenta")
MAX_IDS = 5
OVERLAP_RULES = ("higher_id", "smaller_on_top")
MAX_DISTANCE = 64.0  # RGB 0..255 units; the default palette's colours are at least 255 apart


@dataclass(frozen=True)
class LatentFactors:
    """Pixel -> token factors: ``temporal`` pixel frames per latent frame after the first, ``spatial`` pixels per
    token side (VAE factor x patch size)."""
    temporal: int
    spatial: int


LATENT_FACTORS = {
    "cogvideox": LatentFactors(4, 16),  # VAE x8, patch 2
    "wan2.1": LatentFactors(4, 16),  # VAE x8, patch (1, 2, 2)
    "wan2.2-5b": LatentFactors(4, 32),  # VAE x16, patch (1, 2, 2)
}


# ------------------------------------------------------------------------------------------ palette
def parse_palette(palette=None, *, where: str = "palette") -> tuple[tuple[int, int, int], ...]:
    """A palette from a sequence of RGB triples or its JSON text (``[[0,0,0],[255,0,0],...]``); entry 0 is the
    background, entry k the colour of ID k. None or "" gives ``PALETTE``."""
    if palette is None or (isinstance(palette, str) and not palette.strip()):
        return PALETTE
    if isinstance(palette, str):
        try:
            palette = json.loads(palette)
        except json.JSONDecodeError as ex:
            raise ValueError(f"{where}: not valid JSON ({ex.msg}); expected a list of [r, g, b] colours, background "
                             "first, e.g. [[0,0,0],[255,0,0],[0,255,0]].") from None
    try:
        out = tuple(tuple(int(c) for c in rgb) for rgb in palette)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a list of [r, g, b] integer colours, background first; got "
                         f"{palette!r}") from None
    if len(out) < 2 or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in out):
        raise ValueError(f"{where}: expected at least 2 colours (background, id1, ...) of three values in 0..255; "
                         f"got {palette!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: colours must be distinct (each ID keeps one colour); got {palette!r}")
    return out


def _check_slots(k: int, palette, where: str) -> None:
    if k > MAX_IDS:
        raise ValueError(f"{where}: {k} instances given; MATRIX conditions on at most {MAX_IDS} IDs. Fix: keep the "
                         f"{MAX_IDS} instances of the interaction (the model was trained with |K| <= {MAX_IDS}).")
    if k > len(palette) - 1:
        raise ValueError(f"{where}: {k} instances but the palette has colours for {len(palette) - 1} IDs; "
                         "add colours to the palette.")


# ------------------------------------------------------------------------------------------ encode
def index_map(masks: torch.Tensor, overlap: str = "higher_id", *, where: str = "id_map") -> torch.Tensor:
    """Instance masks ``[K, ..., H, W]`` (>= 0.5 is inside) -> int64 index map ``[..., H, W]`` (0 background,
    k = ID k), overlaps resolved by ``overlap`` (per frame for ``smaller_on_top``)."""
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"{where}: overlap must be one of {', '.join(OVERLAP_RULES)}; got {overlap!r}")
    m = torch.as_tensor(masks)
    if m.ndim < 3:
        raise ValueError(f"{where}: masks must be [K,H,W] or [K,F,H,W]; got shape {tuple(m.shape)}")
    m = m >= 0.5 if m.dtype != torch.bool else m
    k = m.shape[0]
    _check_slots(k, PALETTE, where)
    out = torch.zeros(m.shape[1:], dtype=torch.int64)
    if k == 0:
        return out
    ids = torch.arange(1, k + 1).view(k, *([1] * (m.ndim - 1)))
    if overlap == "higher_id":
        # the highest ID covering a pixel wins: max over slots of id * inside
        return (m.long() * ids).amax(0)
    area = m.flatten(-2).sum(-1)  # [K, ...] pixels per slot (per frame)
    # priority: smaller area first, then higher id; paint the lowest priority first so the best lands last
    key = area.double() * (k + 1) - ids.view(k, *([1] * (area.ndim - 1))).double()
    order = key.argsort(dim=0, descending=True)  # [K, ...]
    for r in range(k):
        sel = order[r]  # [...]: which slot paints at rank r
        slot = m.gather(0, sel[None, ..., None, None].expand(1, *m.shape[1:]))[0]
        out = torch.where(slot, (sel + 1)[..., None, None].expand_as(out), out)
    return out


def palette_image(index: torch.Tensor, palette=PALETTE) -> torch.Tensor:
    """Index map ``[..., H, W]`` -> float32 RGB ``[..., H, W, 3]`` in 0..1 (the palette's colours / 255)."""
    pal = torch.tensor(parse_palette(palette), dtype=torch.float32) / 255.0
    idx = torch.as_tensor(index).long()
    if idx.numel() and (int(idx.max()) >= len(pal) or int(idx.min()) < 0):
        raise ValueError(f"palette_image: index values must be in 0..{len(pal) - 1}; got "
                         f"{int(idx.min())}..{int(idx.max())}")
    return pal[idx]


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """NEAREST resize of the last two dims of ``x`` (any dtype); no new values appear."""
    x = torch.as_tensor(x)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = F.interpolate(flat.float(), size=tuple(int(s) for s in size), mode="nearest")
    return out.reshape(*lead, *out.shape[-2:]).to(x.dtype)


def id_map_image(masks: torch.Tensor, palette=PALETTE, overlap: str = "higher_id", *, frame: int = 0,
                 size: tuple[int, int] | None = None, where: str = "id_map") -> torch.Tensor:
    """The first-frame ID map I0 as an IMAGE ``[1, H, W, 3]`` in 0..1: ``masks`` ``[K, F, H, W]`` (``frame`` is
    used) or ``[K, H, W]``; ``size`` (H, W) resizes the index map NEAREST, so no new colours appear."""
    pal = parse_palette(palette)
    m = torch.as_tensor(masks)
    if m.ndim == 4:
        if not 0 <= frame < m.shape[1]:
            raise ValueError(f"{where}: frame {frame} is outside the {m.shape[1]} frames of the masks")
        m = m[:, frame]
    if m.ndim != 3:
        raise ValueError(f"{where}: masks must be [K,H,W] or [K,F,H,W]; got shape {tuple(masks.shape)}")
    _check_slots(m.shape[0], pal, where)
    idx = index_map(m, overlap, where=where)
    if size is not None:
        idx = resize_nearest(idx, size)
    return palette_image(idx, pal)[None]


# ------------------------------------------------------------------------------------------ decode
def decode_palette(image: torch.Tensor, palette=PALETTE, max_distance: float = MAX_DISTANCE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A palette picture -> (index map int64 ``[H, W]``, unmatched bool ``[H, W]``).

    ``image`` is ``[H, W, 3]`` (or ``[1, H, W, 3]``), float in 0..1 or uint8. Every pixel takes the nearest palette
    colour (Euclidean, RGB 0..255), which absorbs mild compression noise; pixels farther than ``max_distance`` from
    every colour are background in the index map and flagged ``unmatched``.
    """
    pal = torch.tensor(parse_palette(palette), dtype=torch.float32)
    x = torch.as_tensor(image)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError("decode_palette: image must be [H,W,3] or [1,H,W,3]; got "
                         f"{tuple(torch.as_tensor(image).shape)}")
    x = x.float() if x.dtype == torch.uint8 else x.float() * 255.0
    d = torch.cdist(x.reshape(-1, 3), pal)  # [HW, P]
    dist, idx = d.min(dim=1)
    unmatched = dist > float(max_distance)
    idx = torch.where(unmatched, torch.zeros_like(idx), idx)
    return idx.reshape(x.shape[:2]), unmatched.reshape(x.shape[:2])


def masks_from_index(index: torch.Tensor, num_ids: int | None = None) -> torch.Tensor:
    """Index map ``[..., H, W]`` -> bool masks ``[K, ..., H, W]`` with ``masks[k-1] = index == k``; ``num_ids``
    defaults to the highest ID present."""
    idx = torch.as_tensor(index).long()
    k = int(idx.max()) if num_ids is None and idx.numel() else int(num_ids or 0)
    return torch.stack([idx == i for i in range(1, k + 1)]) if k else torch.zeros((0, *idx.shape), dtype=torch.bool)


# ------------------------------------------------------------------------------------------ latent tracks
def latent_frame_count(num_frames: int, temporal: int = 4) -> int:
    """1 + (F - 1) / temporal: 49 -> 13, 81 -> 21 (F must be 1 + temporal * n)."""
    if num_frames < 1 or temporal < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"mask tracks: {num_frames} pixel frames cannot map to latent frames with a temporal factor "
                         f"of {temporal}; expected 1 + {temporal}*n frames (e.g. 49 or 81). Fix: trim the clip.")
    return 1 + (num_frames - 1) // temporal


def latent_time_or(masks: torch.Tensor, temporal: int = 4) -> torch.Tensor:
    """Bool masks ``[..., F, H, W]`` -> ``[..., T, H, W]``: latent frame 0 = pixel frame 0, latent frame i >= 1 =
    OR of pixel frames temporal*(i-1)+1 .. temporal*i (4i-3 .. 4i for the 3-D VAEs)."""
    m = torch.as_tensor(masks)
    m = m >= 0.5 if m.dtype != torch.bool else m
    f = m.shape[-3]
    t = latent_frame_count(f, temporal)
    rest = m[..., 1:, :, :].reshape(*m.shape[:-3], t - 1, temporal, *m.shape[-2:]).any(-3)
    return torch.cat([m[..., :1, :, :], rest], dim=-3)


def latent_space_nearest(masks: torch.Tensor, spatial: int = 16) -> torch.Tensor:
    """Masks ``[..., H, W]`` -> bool ``[..., H/spatial, W/spatial]``: NEAREST resize, then > 0.5."""
    m = torch.as_tensor(masks)
    h, w = m.shape[-2:]
    if spatial < 1 or h % spatial or w % spatial:
        raise ValueError(f"mask tracks: a {h}x{w} mask does not divide into {spatial}-pixel tokens; expected H and "
                         f"W multiples of {spatial}. Fix: resize the masks with the frames.")
    return resize_nearest(m.float(), (h // spatial, w // spatial)) > 0.5


def latent_mask_track(masks: torch.Tensor, temporal: int = 4, spatial: int = 16) -> torch.Tensor:
    """Pixel mask tracks ``[..., F, H, W]`` -> latent-resolution tracks bool ``[..., T, h, w]`` (the analysis
    mapping: NEAREST per pixel frame, then the 1 + 4k OR-grouping)."""
    return latent_time_or(latent_space_nearest(masks, spatial), temporal)


# ------------------------------------------------------------------------------------------ ID map bundle
@dataclass
class IdMap:
    """INTERPLAY_ID_MAP: the first-frame ID map and the masks it was made from.

    image    float32 [1, H, W, 3] in 0..1, the palette picture of frame 0 (what the model is conditioned on)
    index    int64 [H, W], 0 background, k = ID k (after the overlap rule)
    masks    bool [K, F, H, W] pixel mask tracks, ID k = masks[k-1] (F = 1 for a painted or decoded map);
             the overlap rule is NOT applied here (tracks keep every instance's full mask)
    palette  the colours, background first
    overlap  the overlap rule used for ``index``/``image``
    labels   a name per ID slot ("red box"), or empty strings
    """
    image: torch.Tensor
    index: torch.Tensor
    masks: torch.Tensor
    palette: tuple = PALETTE
    overlap: str = "higher_id"
    labels: tuple = field(default_factory=tuple)

    @property
    def num_slots(self) -> int:
        return int(self.masks.shape[0])

    @property
    def ids(self) -> list[int]:
        """IDs visible in the ID map (present after the overlap rule)."""
        return [k for k in range(1, len(self.palette)) if bool((self.index == k).any())]

    @property
    def is_empty(self) -> bool:
        return not bool((self.index > 0).any())

    def latent_tracks(self, temporal: int = 4, spatial: int = 16) -> torch.Tensor:
        """bool [K, T, h, w] (the analysis mapping; see ``latent_mask_track``)."""
        return latent_mask_track(self.masks, temporal, spatial)

    def first_frame_latent(self, spatial: int = 16) -> torch.Tensor:
        """bool [K, h, w]: the first-frame masks at token resolution (the v2v query sets of spec §2.3)."""
        return latent_space_nearest(self.masks[:, 0], spatial)


def build_id_map(masks: torch.Tensor, palette=PALETTE, overlap: str = "higher_id", labels: Sequence[str] = (),
                 *, where: str = "id_map") -> IdMap:
    """Masks ``[K, F, H, W]`` or ``[K, H, W]`` -> IdMap of frame 0."""
    pal = parse_palette(palette, where=where)
    m = torch.as_tensor(masks)
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4:
        raise ValueError(f"{where}: masks must be [K,H,W] or [K,F,H,W]; got shape "
                         f"{tuple(torch.as_tensor(masks).shape)}")
    m = m >= 0.5 if m.dtype != torch.bool else m
    _check_slots(m.shape[0], pal, where)
    idx = index_map(m[:, 0], overlap, where=where)
    labels = tuple(labels) + ("",) * (m.shape[0] - len(labels))
    return IdMap(image=palette_image(idx, pal)[None], index=idx, masks=m.cpu(), palette=pal, overlap=overlap,
                 labels=labels[:m.shape[0]])


def id_map_from_image(image: torch.Tensor, palette=PALETTE, max_distance: float = MAX_DISTANCE,
                      num_ids: int | None = None) -> tuple[IdMap, int]:
    """A palette picture -> (IdMap with one-frame masks, number of unmatched pixels). ``num_ids`` slots (default:
    every ID of the palette, at most 5)."""
    pal = parse_palette(palette)
    idx, unmatched = decode_palette(image, pal, max_distance)
    k = min(len(pal) - 1, MAX_IDS) if num_ids is None else int(num_ids)
    _check_slots(k, pal, "id_map_from_image")
    masks = masks_from_index(idx, k)[:, None]
    return IdMap(image=palette_image(idx, pal)[None], index=idx, masks=masks, palette=pal, overlap="higher_id",
                 labels=("",) * k), int(unmatched.sum())


def scene_objects(clip, objects: str | Sequence[int] | None = "auto", *, where: str = "id_map") -> list[int]:
    """Which sandbox objects become IDs (0-based object indices, in ID order).

    ``auto``: every object when there are at most 5; otherwise the ones that take part (the driven objects, then
    the objects in collisions in order of first contact). A list (or "1,3,2", 1-based as in the scene's id_map)
    picks them explicitly.
    """
    n = len(clip.objects)
    if objects is None or (isinstance(objects, str) and objects.strip().lower() in ("", "auto")):
        if n <= MAX_IDS:
            return list(range(n))
        sel = list(dict.fromkeys(int(i) for i in clip.driven))
        for ev in sorted(clip.events, key=lambda e: e["t"]):
            for i in (ev["a"], ev["b"]):
                if i >= 0 and i not in sel:
                    sel.append(int(i))
        if len(sel) > MAX_IDS:
            raise ValueError(f"{where}: the scene has {n} objects and {len(sel)} of them move or collide; MATRIX "
                             f"takes at most {MAX_IDS}. Fix: list the objects to keep, e.g. '1,2'.")
        return sel
    if isinstance(objects, str):
        try:
            picked = [int(s) - 1 for s in objects.replace(" ", "").split(",") if s]
        except ValueError:
            raise ValueError(f"{where}: objects must be 'auto' or comma-separated object numbers (1-based, as in the "
                             f"scene's id_map), e.g. '1,3'; got {objects!r}") from None
    else:
        picked = [int(i) for i in objects]
    bad = [i + 1 for i in picked if not 0 <= i < n]
    if bad:
        raise ValueError(f"{where}: object {bad[0]} is not in the scene (it has objects 1..{n})")
    if len(set(picked)) != len(picked):
        raise ValueError(f"{where}: objects lists an object twice: {objects!r}")
    if len(picked) > MAX_IDS:
        raise ValueError(f"{where}: {len(picked)} objects listed; MATRIX takes at most {MAX_IDS}")
    return picked


def masks_from_scene(clip, objects: str | Sequence[int] | None = "auto", *, where: str = "id_map"
                     ) -> tuple[torch.Tensor, tuple[str, ...]]:
    """A sandbox SceneClip -> (bool masks [K, F, H, W] in ID order, labels): ID k is the k-th chosen object
    (``scene_objects``), its mask the object's visible pixels from the scene's id_map."""
    sel = scene_objects(clip, objects, where=where)
    idm = torch.from_numpy(clip.id_map.astype("int64"))
    f, h, w = idm.shape
    masks = torch.stack([idm == i + 1 for i in sel]) if sel else torch.zeros((0, f, h, w), dtype=torch.bool)
    labels = tuple(f"{clip.objects[i]['colour']} {clip.objects[i]['shape']}" for i in sel)
    return masks, labels
