"""MATRIX attention read-outs: v2t grounding maps, v2v propagation maps, the Attention Alignment Score and the
interaction-dominant layer ranking (spec seed-004 §2.1-§2.5, §3.3). Pure maths on q and k; the capture hooks that
hand them over live with the backbone families.

Inputs are the q and k an attention call feeds to its softmax (after QK-norm and RoPE), ``[B, heads, N, d]``, and a
``TokenLayout`` saying where the video and text tokens sit:

- ``joint`` (CogVideoX): one sequence, one softmax over all keys; text first (226 tokens) then video, for both q
  and k. v2t and v2v are slices of that one softmax and are never renormalised (§2.1).
- ``self`` (Wan ``attn1``): q and k are the video tokens only.
- ``cross`` (Wan ``attn2``, its text part): q are the video tokens, k the text tokens (the softmax runs over the
  text keys alone; Wan 2.1's image keys have their own softmax and are not passed).

Video tokens are ordered frame-major then row-major, ``grid = (T, h, w)`` latent frames x token rows x token
columns (CogVideoX 13 x 30 x 45 at 49 x 480 x 720), as both families' patch embeddings flatten them.

Two read-outs (``mode``): ``softmax`` (attention probabilities) and ``logits`` (pre-softmax q.k * scale, the
spec's training default). Heads are reduced by ``mean`` (default), ``sum`` (the paper's "head-summed", H x mean)
or, for logits, ``full_dim`` (q.k over the full width / sqrt(width), the public code's form, = sqrt(H) x mean).

Cost: queries are processed in blocks of ``chunk``, so the largest temporary is one ``[B, H, chunk, N_keys]``
float32 block (softmax is taken in place in it). Logit maps need no block at all: a
token-set mean of logits is q . mean(k) and a query-set mean is mean(q) . k, both exact because q.k is linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

MODES = ("logits", "softmax")
HEAD_REDUCE = ("mean", "sum", "full_dim")
LAYOUTS = ("joint", "self", "cross")


@dataclass(frozen=True)
class TokenLayout:
    """Where video and text tokens sit in one attention call's q and k.

    kind        "joint" | "self" | "cross" (see the module doc)
    grid        (T, h, w) video tokens: latent frames, token rows, token columns
    text_len    text tokens (joint: inside the sequence; cross: the keys); 0 for self
    text_first  joint only: text occupies positions [0, text_len) and video follows (CogVideoX); else video first
    """
    kind: str
    grid: tuple
    text_len: int = 0
    text_first: bool = True

    def __post_init__(self):
        if self.kind not in LAYOUTS:
            raise ValueError(f"TokenLayout: kind must be one of {', '.join(LAYOUTS)}; got {self.kind!r}")
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"TokenLayout: grid must be (T, h, w) with positive sizes; got {self.grid}")
        if self.kind in ("joint", "cross") and self.text_len < 1:
            raise ValueError(f"TokenLayout: a {self.kind} layout needs text_len >= 1; got {self.text_len}")

    @classmethod
    def cogvideox(cls, grid, text_len: int = 226) -> "TokenLayout":
        return cls("joint", tuple(grid), int(text_len), True)

    @classmethod
    def wan_self(cls, grid) -> "TokenLayout":
        return cls("self", tuple(grid))

    @classmethod
    def wan_cross(cls, grid, text_len: int = 512) -> "TokenLayout":
        return cls("cross", tuple(grid), int(text_len))

    @property
    def num_video(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def frame_tokens(self) -> int:
        return self.grid[1] * self.grid[2]

    def video_queries(self) -> slice:
        """Positions of the video tokens among the queries."""
        if self.kind == "joint" and self.text_first:
            return slice(self.text_len, self.text_len + self.num_video)
        return slice(0, self.num_video)

    def text_keys(self) -> slice:
        if self.kind == "self":
            raise ValueError("TokenLayout: a self-attention layout has no text keys (v2t needs joint or cross)")
        if self.kind == "cross" or self.text_first:
            return slice(0, self.text_len)
        return slice(self.num_video, self.num_video + self.text_len)

    def video_keys(self) -> slice:
        if self.kind == "cross":
            raise ValueError("TokenLayout: a cross-attention layout has no video keys (v2v needs joint or self)")
        return self.video_queries()

    def check(self, q: torch.Tensor, k: torch.Tensor, where: str) -> None:
        if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{where}: q and k must be [B, heads, N, d] with equal B, heads and d; got "
                             f"{tuple(q.shape)} and {tuple(k.shape)}")
        nq = self.num_video + (self.text_len if self.kind == "joint" else 0)
        nk = {"joint": nq, "self": self.num_video, "cross": self.text_len}[self.kind]
        if q.shape[2] != nq or k.shape[2] != nk:
            raise ValueError(f"{where}: the {self.kind} layout with grid {self.grid} and text_len {self.text_len} "
                             f"expects {nq} queries and {nk} keys; got {q.shape[2]} and {k.shape[2]}. Fix: declare "
                             "the layout the attention call really has (grid = latent frames x token rows x cols).")


def _check_options(mode: str, head_reduce: str, chunk: int, where: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {', '.join(MODES)}; got {mode!r}")
    if head_reduce not in HEAD_REDUCE:
        raise ValueError(f"{where}: head_reduce must be one of {', '.join(HEAD_REDUCE)}; got {head_reduce!r}")
    if head_reduce == "full_dim" and mode != "logits":
        raise ValueError(f"{where}: head_reduce 'full_dim' is a logit read-out; use mean or sum with softmax")
    if chunk < 1:
        raise ValueError(f"{where}: chunk must be >= 1; got {chunk}")


def _reduce_heads(x: torch.Tensor, how: str) -> torch.Tensor:
    """[B, H, ...] -> [B, ...]."""
    h = x.shape[1]
    m = x.mean(1)
    return m * h if how == "sum" else m * math.sqrt(h) if how == "full_dim" else m


def set_matrix(token_sets: Sequence[Sequence[int]], n: int, where: str = "v2t_maps") -> torch.Tensor:
    """[n, S] float32 averaging matrix: column s is 1/|T_s| on the tokens of set s."""
    w = torch.zeros(n, len(token_sets))
    for s, toks in enumerate(token_sets):
        toks = sorted({int(t) for t in toks})
        if not toks:
            raise ValueError(f"{where}: token set {s} is empty; every set needs at least one token. Fix: drop IDs "
                             "that are not in the prompt (or were truncated).")
        if toks[0] < 0 or toks[-1] >= n:
            raise ValueError(f"{where}: token set {s} has positions outside 0..{n - 1}: {toks}")
        w[toks, s] = 1.0 / len(toks)
    return w


def _rowwise_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, in place: the logits block is the only big buffer (torch.softmax and logsumexp
    would allocate a second one). Under autograd (training on softmax maps) the out-of-place softmax runs, since
    backward needs the probabilities the in-place steps would overwrite."""
    if logits.requires_grad:
        return logits.softmax(-1)
    logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=-1, keepdim=True))


def v2t_maps(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, token_sets: Sequence[Sequence[int]], *,
             mode: str = "logits", head_reduce: str = "mean", chunk: int = 1024, scale: float | None = None
             ) -> torch.Tensor:
    """Video-to-text grounding maps -> float32 ``[B, S, T, h, w]``.

    Map s is the mean, over the text tokens of ``token_sets[s]`` (positions in the text sequence), of each video
    query's attention to that token (§2.2: A_e^v2t = mean_{t in T_e} A^v2t(t)), heads reduced by ``head_reduce``.
    Softmax values are the slice of the one softmax over all keys (joint) or over the text keys (cross).
    Give singleton sets (``[[i] for i in range(L)]``) for per-token heatmaps.
    """
    where = "v2t_maps"
    _check_options(mode, head_reduce, chunk, where)
    layout.check(q, k, where)
    b, heads, _, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qv = q[:, :, layout.video_queries()]
    kt = k[:, :, layout.text_keys()].float()
    w = set_matrix(token_sets, kt.shape[2], where).to(q.device)
    n_sets = w.shape[1]
    out = torch.empty(b, layout.num_video, n_sets, dtype=torch.float32, device=q.device)
    if mode == "logits":
        kbar = torch.einsum("bhld,ls->bhsd", kt, w)  # the mean key of each set: exact for logits
        for c0 in range(0, layout.num_video, chunk):
            blk = (qv[:, :, c0:c0 + chunk].float() * scale) @ kbar.transpose(-1, -2)  # [B, H, c, S]
            out[:, c0:c0 + chunk] = _reduce_heads(blk, head_reduce)
    else:
        kf = k.float()
        tk = layout.text_keys()
        for c0 in range(0, layout.num_video, chunk):
            p = _rowwise_softmax_((qv[:, :, c0:c0 + chunk].float() * scale) @ kf.transpose(-1, -2))  # [B, H, c, Nk]
            out[:, c0:c0 + chunk] = _reduce_heads(p[..., tk] @ w, head_reduce)
            del p
    return out.permute(0, 2, 1).reshape(b, n_sets, *layout.grid)


def _query_weights(masks: torch.Tensor, b: int, layout: TokenLayout, where: str) -> torch.Tensor:
    """[E, h, w] or [B, E, h, w] masks -> [B, E, h*w] float weights 1/|Q_e| on the query tokens."""
    m = torch.as_tensor(masks)
    if m.ndim == 3:
        m = m[None].expand(b, *m.shape)
    _, h, w = layout.grid
    if m.ndim != 4 or m.shape[0] != b or tuple(m.shape[2:]) != (h, w):
        raise ValueError(f"{where}: query masks must be [E, {h}, {w}] or [{b}, E, {h}, {w}] (the token grid); got "
                         f"{tuple(torch.as_tensor(masks).shape)}. Fix: bring the first-frame masks to token "
                         "resolution (id_map.latent_space_nearest).")
    m = (m >= 0.5 if m.dtype != torch.bool else m).reshape(b, m.shape[1], h * w).float()
    n = m.sum(-1, keepdim=True)
    if bool((n == 0).any()):
        e = int((n[..., 0] == 0).nonzero()[0, 1])
        raise ValueError(f"{where}: query mask {e} is empty at token resolution; an instance needs at least one "
                         "first-frame token. Fix: drop that ID (too small for the token grid) or use a finer grid.")
    return m / n


def v2v_maps(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, query_masks: torch.Tensor, *,
             mode: str = "logits", head_reduce: str = "mean", chunk: int = 1024, scale: float | None = None,
             query_frame: int = 0) -> torch.Tensor:
    """Video-to-video propagation maps -> float32 ``[B, E, T, h, w]``.

    Map e is the mean, over the tokens of latent frame ``query_frame`` inside ``query_masks[e]`` (token grid
    ``[E, h, w]``, or per batch row ``[B, E, h, w]``), of each such query's attention row over all video keys
    (§2.3: A_e^v2v = mean_{q in Q_e} A^v2v(q)). Softmax rows run over every key (text too, in joint layouts) and
    are sliced, not renormalised.
    """
    where = "v2v_maps"
    _check_options(mode, head_reduce, chunk, where)
    layout.check(q, k, where)
    b, heads, _, d = q.shape
    t, h, w = layout.grid
    if not 0 <= query_frame < t:
        raise ValueError(f"{where}: query_frame {query_frame} is outside the {t} latent frames")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    wq = _query_weights(query_masks, b, layout, where).to(q.device)  # [B, E, hw]
    n_maps = wq.shape[1]
    v0 = layout.video_queries().start + query_frame * h * w
    qf = q[:, :, v0:v0 + h * w]  # the query frame's tokens [B, H, hw, d]
    if mode == "logits":
        qbar = torch.einsum("beq,bhqd->bhed", wq, qf.float())  # the mean query of each set: exact for logits
        kv = k[:, :, layout.video_keys()]
        out = torch.empty(b, n_maps, layout.num_video, dtype=torch.float32, device=q.device)
        for c0 in range(0, layout.num_video, chunk):  # blocks over keys bound the [B, H, E, c] temporary
            out[..., c0:c0 + chunk] = _reduce_heads((qbar * scale) @ kv[:, :, c0:c0 + chunk].float().transpose(-1, -2),
                                                    head_reduce)
        return out.reshape(b, n_maps, t, h, w)
    used = (wq > 0).any(1).any(0).nonzero().flatten()  # only queries inside some mask matter
    kf = k.float()
    vk = layout.video_keys()
    out = torch.zeros(b, n_maps, layout.num_video, dtype=torch.float32, device=q.device)
    for c0 in range(0, used.numel(), chunk):
        idx = used[c0:c0 + chunk]
        p = _rowwise_softmax_((qf[:, :, idx].float() * scale) @ kf.transpose(-1, -2))  # [B, H, c, Nk]
        out += wq[:, :, idx] @ _reduce_heads(p[..., vk], head_reduce)  # [B, E, c] @ [B, c, Nv]
        del p
    return out.reshape(b, n_maps, t, h, w)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The full softmax(q k^T * scale) ``[B, H, Nq, Nk]`` in float32: the dense reference (small sizes only)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return (q.float() @ k.float().transpose(-1, -2) * scale).softmax(-1)


# ------------------------------------------------------------------------------------------ AAS
def aas(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Attention Alignment Score (§2.4): sum over (T, h, w) of map * mask, raw magnitudes, no threshold.
    ``maps`` ``[..., T, h, w]``, ``masks`` broadcastable bool/0-1 ``[..., T, h, w]`` -> ``[...]``."""
    m = torch.as_tensor(masks)
    if tuple(m.shape[-3:]) != tuple(maps.shape[-3:]):
        raise ValueError(f"aas: the map grid {tuple(maps.shape[-3:])} and the mask track grid {tuple(m.shape[-3:])} "
                         "differ; expected the same (T, h, w). Fix: build the track with id_map.latent_mask_track "
                         "and the backbone's factors.")
    return (maps.float() * m.to(maps.device, torch.float32)).sum((-3, -2, -1))


def union_track(*tracks: torch.Tensor) -> torch.Tensor:
    """Per-frame union of mask tracks (the verb target M_sub | M_obj)."""
    out = torch.as_tensor(tracks[0]).bool()
    for t in tracks[1:]:
        out = out | torch.as_tensor(t).bool()
    return out


@dataclass
class MapAccumulator:
    """Running sums of maps over denoising steps: ``add(key, map)`` then ``mean(key)`` (the per-video step average
    AAS and the visualiser read). Keys are free-form, e.g. (layer, "v2t", "id1")."""
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def add(self, key, value: torch.Tensor) -> None:
        v = value.detach().float().cpu()
        self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, key) -> torch.Tensor:
        return self.sums[key] / self.counts[key]

    def keys(self):
        return list(self.sums)


# ------------------------------------------------------------------------------------------ layer ranking
def _rank_desc(x: np.ndarray) -> np.ndarray:
    """Rank 1 = largest; ties share their average rank."""
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


@dataclass
class LayerRanking:
    """The §2.5 statistics for one variant (noun/verb grounding or propagation), indexed like ``layers``.

    layers       layer ids of the table's columns
    frequency    videos in which the layer is in that video's top-k by step-averaged AAS
    magnitude    mean AAS over videos
    rank_frequency, rank_magnitude, rank_sum   rank 1 = largest statistic (ties averaged); rank_sum = their sum
    influential  the n best layers by rank_sum (ties: larger magnitude, then lower layer id), best first
    With success labels (equal success/failure sets in the paper), for the influential layers:
    mu_success, mu_failure, mu_all, success_gap = mu_S - mu_all, failure_gap = mu_F - mu_all,
    separation = success_gap - failure_gap (= mu_S - mu_F);
    by_separation  the influential layers by separation, best first
    dominant       those of them with success_gap > 0 and failure_gap < 0, best first
    """
    layers: list
    frequency: np.ndarray
    magnitude: np.ndarray
    rank_frequency: np.ndarray
    rank_magnitude: np.ndarray
    rank_sum: np.ndarray
    influential: list
    top_k: int
    mu_success: dict = field(default_factory=dict)
    mu_failure: dict = field(default_factory=dict)
    mu_all: dict = field(default_factory=dict)
    success_gap: dict = field(default_factory=dict)
    failure_gap: dict = field(default_factory=dict)
    separation: dict = field(default_factory=dict)
    by_separation: list = field(default_factory=list)
    dominant: list = field(default_factory=list)

    def as_dict(self) -> dict:
        per = {str(layer): {"frequency": int(self.frequency[i]), "magnitude": float(self.magnitude[i]),
                            "rank_frequency": float(self.rank_frequency[i]),
                            "rank_magnitude": float(self.rank_magnitude[i]), "rank_sum": float(self.rank_sum[i])}
               for i, layer in enumerate(self.layers)}
        for layer in self.influential:
            if layer in self.separation:
                per[str(layer)].update(mu_success=self.mu_success[layer], mu_failure=self.mu_failure[layer],
                                       mu_all=self.mu_all[layer], success_gap=self.success_gap[layer],
                                       failure_gap=self.failure_gap[layer], separation=self.separation[layer])
        return {"v": 1, "top_k": self.top_k, "influential": list(self.influential),
                "by_separation": list(self.by_separation), "dominant": list(self.dominant), "layers": per}


def rank_layers(aas_table, success=None, *, top_k: int = 10, n_influential: int = 10,
                layer_ids: Sequence[int] | None = None) -> LayerRanking:
    """Influential and interaction-dominant layers (§2.5) from AAS values.

    ``aas_table``: ``[V, L]`` (videos x layers, already step-averaged) or ``[V, S, L]`` (per step; averaged here).
    ``success``: optional bool per video (human success/failure judgement) for the dominant-layer statistics.
    """
    a = np.asarray(aas_table.detach().cpu() if isinstance(aas_table, torch.Tensor) else aas_table, np.float64)
    if a.ndim == 3:
        a = a.mean(1)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"rank_layers: the AAS table must be [videos, layers] or [videos, steps, layers]; got shape "
                         f"{np.shape(aas_table)}")
    if not np.isfinite(a).all():
        raise ValueError("rank_layers: the AAS table has NaN or infinite values; drop the videos they come from")
    v, n_layers = a.shape
    layers = list(range(n_layers)) if layer_ids is None else [int(x) for x in layer_ids]
    if len(layers) != n_layers:
        raise ValueError(f"rank_layers: {len(layers)} layer ids for {n_layers} table columns")
    k = min(int(top_k), n_layers)
    top = np.zeros_like(a, dtype=bool)
    for i in range(v):
        top[i, np.argsort(-a[i], kind="stable")[:k]] = True
    freq = top.sum(0)
    mag = a.mean(0)
    rf, rm = _rank_desc(freq.astype(np.float64)), _rank_desc(mag)
    rs = rf + rm
    order = sorted(range(n_layers), key=lambda j: (rs[j], -mag[j], layers[j]))
    infl = [layers[j] for j in order[:min(int(n_influential), n_layers)]]
    out = LayerRanking(layers=layers, frequency=freq, magnitude=mag, rank_frequency=rf, rank_magnitude=rm,
                       rank_sum=rs, influential=infl, top_k=k)
    if success is None:
        return out
    s = np.asarray(success, dtype=bool)
    if s.shape != (v,) or s.all() or not s.any():
        raise ValueError(f"rank_layers: success must give one bool per video ({v}) with both successes and "
                         "failures present")
    col = {layer: j for j, layer in enumerate(layers)}
    for layer in infl:
        x = a[:, col[layer]]
        mu_s, mu_f, mu_a = float(x[s].mean()), float(x[~s].mean()), float(x.mean())
        out.mu_success[layer], out.mu_failure[layer], out.mu_all[layer] = mu_s, mu_f, mu_a
        out.success_gap[layer], out.failure_gap[layer] = mu_s - mu_a, mu_f - mu_a
        out.separation[layer] = (mu_s - mu_a) - (mu_f - mu_a)
    out.by_separation = sorted(infl, key=lambda layer: (-out.separation[layer], layer))
    out.dominant = [layer for layer in out.by_separation
                    if out.success_gap[layer] > 0 and out.failure_gap[layer] < 0]
    return out
