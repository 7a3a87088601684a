"""MATRIX training and its weights file: a LoRA on the preset's layers (peft), the widened input projection and the
attention decoder(s), trained with L = L_DM + lambda_SGA L_SGA + lambda_SPA L_SPA (spec seed-004 §3), on the CogVideoX
training base (``training.cogvideox``).

Per step: the clip's instances become IDs (at most 5) with mask tracks; their first-frame palette ID map is
VAE-encoded like the I2V image (a one-frame video, zero-padded in time: the posterior mode) and fed through the
widened projection (``inputs={"id_map": ...}``); the prompt's markup gives the token sets; one forward with a
gradient-keeping :class:`~..control.matrix_capture.MatrixCapture` on the preset's v2t / v2v layers gives the
diffusion loss and the maps. Maps are decoded by the causal decoder D_phi to full-frame-rate mask-track logits and
compared with the pixel tracks at ``target_scale`` (never OR-pooled: D_phi restores time, spec §3.4). Roles per
preset (``alignment.role_targets``): paper sub / obj / verb (SGA) and sub / obj (SPA) per interaction; code one map
per present ID. The alignment losses reach the LoRA of q and k of the captured layers (and of the layers before
them) and the widened projection; v and out learn from L_DM.

Data (sandbox format, ``SandboxDataset``): ``frames``, ``masks`` [N, F, H, W] per clip, ``caption`` and the
clip's ``objects`` / ``events``. A caption already in MATRIX markup (``[the cup](2)``, ``<id2>``) is used as it is,
ID k being object k; otherwise up to 5 objects become IDs (``id_map.scene_objects``: all when <= 5, else the driven
and colliding ones) and their names in the caption are marked up (``matrix_prompt.mark_up``); ``interactions_only``
keeps just the "A pushes B" clauses (the default: MATRIX prompts describe the interaction).

The weights file (one safetensors): the LoRA in diffusers keys (``transformer.<path>.lora_A.weight``), the
projection (``transformer.patch_embed.proj.weight`` / ``.bias``), the decoders (``matrix_decoder.<head>.*``), and
``interplay_matrix`` metadata (the preset, the extra input's name and channels, the LoRA rank/alpha/targets, the
palette). :func:`load_matrix` puts LoRA and projection on a backbone; the decoders are not needed to sample.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ..backbones import cogvideox as cvx
from ..backbones.base import Attachment, Backbone, cast
from ..backbones.widen import input_projection, projection_name, widen_input
from ..conditions import id_map as I
from ..conditions import matrix_prompt as P
from ..control import matrix_capture as C
from . import alignment as A
from .cogvideox import CogVideoXI2VBase

TASK = "matrix_lora"
META = "interplay_matrix"
INPUT = "id_map"
DECODER_PREFIX = "matrix_decoder"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ samples
def markup_of(preset: A.MatrixPreset, markup: str = "auto") -> str:
    if markup not in ("auto", "paper_spans", "id_tags"):
        raise ValueError(f"MATRIX: markup must be auto, paper_spans or id_tags; got {markup!r}")
    return preset.markup if markup == "auto" else markup


def clip_prompt(caption: str, objects, driven=(), events=(), *, markup: str = "paper_spans", select="auto",
                interactions_only: bool = True, num_masks: int | None = None, where: str = "MATRIX"
                ) -> tuple[str, list[int]]:
    """(caption in markup, object indices of IDs 1..K) for one clip; see the module doc."""
    if P._SPAN.search(caption) or P._TAG.search(caption):
        ids = sorted({int(m.group(2)) for m in P._SPAN.finditer(caption)} | {int(m.group(1))
                                                                           for m in P._TAG.finditer(caption)})
        k = max(ids)
        if num_masks is not None and k > num_masks:
            raise ValueError(f"{where}: the caption marks ID {k} but the clip has {num_masks} instance masks")
        return caption, list(range(k))
    if not objects:
        raise ValueError(f"{where}: the caption has no MATRIX markup and the clip lists no objects to name; write the "
                         "caption with markup ('[the red box](1) [pushes](1>2) [the cup](2)') or list the objects "
                         "in clip.json")
    clip = SimpleNamespace(objects=objects, driven=list(driven), events=list(events))
    if isinstance(select, str) and select.strip().lower() in ("", "auto") and len(objects) > I.MAX_IDS:
        # a dataset clip never stops a run: the driven objects, then the first to collide, at most 5
        sel = list(dict.fromkeys([int(i) for i in driven] + [int(i) for ev in sorted(events, key=lambda e: e["t"])
                                                             for i in (ev["a"], ev["b"]) if i >= 0]))[:I.MAX_IDS]
        sel = sel or list(range(I.MAX_IDS))
    else:
        sel = I.scene_objects(clip, select, where=where)
    names = {i + 1: f"{objects[o]['colour']} {objects[o]['shape']}" if isinstance(objects[o], dict) else str(objects[o])
             for i, o in enumerate(sel)}
    return P.mark_up(caption, names, markup, interactions_only=interactions_only), sel


@dataclasses.dataclass
class MatrixSample:
    """One clip prepared for MATRIX: ``text`` (what the encoder reads) and its ``tokenizer``, the token sets,
    ID tracks bool [K, F, H, W] (ID k = tracks[k-1]) and the (sub, obj) interactions."""
    text: str
    tokenizer: object
    tokens: P.PromptTokens
    tracks: torch.Tensor
    interactions: list


# ------------------------------------------------------------------------------------------ the task
class MatrixTask(CogVideoXI2VBase):
    """MATRIX LoRA + widened projection + decoders on a frozen CogVideoX I2V backbone (the module doc).

    Preset fields given here override the named preset (None keeps it): layers, LoRA rank / alpha, lambdas, the
    loss and its betas, the map read-out, the decoder's ``target_scale``. ``lambda_sga = lambda_spa = 0`` trains the
    same LoRA and projection with the diffusion loss alone (no capture runs). ``pos_weight_cap`` <= 0 turns the cap
    off. ``proj_lr_scale`` / ``decoder_lr_scale``: learning rates of those groups relative to the LoRA's.
    """
    FAMILY = "cogvideox"  # the Wan family's task (training.matrix_wan) swaps the training base

    def __init__(self, backbone: Backbone, *, preset: str = "paper", v2t_layers=None, v2v_layers=None,
                 lora_rank: int | None = None, lora_alpha: float | None = None, lambda_sga: float | None = None,
                 lambda_spa: float | None = None, loss: str | None = None, map_mode: str | None = None,
                 head_reduce: str | None = None, layer_combine: str | None = None, target_scale: float | None = None,
                 pos_weight_cap: float | None = None, beta_bce: float | None = None, beta_dice: float | None = None,
                 beta_l2: float | None = None, proj_lr_scale: float = 1.0, decoder_lr_scale: float = 1.0,
                 markup: str = "auto", objects: str = "auto", interactions_only: bool = True, palette=None,
                 overlap: str = "higher_id", caption: str | None = None, noise_aug: bool = True,
                 image_dropout: float = 0.0, max_text_length: int = 226, chunk: int = 1024):
        from .lora import LoraTask

        where = "MATRIX training"
        if backbone.family != self.FAMILY:
            raise ValueError(f"{where}: the backbone is {backbone.family}; this task trains {self.FAMILY} (Wan: "
                             "matrix_wan.MatrixWanTask, which train_task picks by family)")
        if backbone.layout is None or not backbone.layout.has("image"):
            raise ValueError(f"{where}: MATRIX is image-to-video; the backbone has no image input")
        over = dict(v2t_layers=_ints(v2t_layers), v2v_layers=_ints(v2v_layers), lora_rank=lora_rank,
                    lora_alpha=lora_alpha, lambda_sga=lambda_sga, lambda_spa=lambda_spa, loss=loss,
                    map_mode=map_mode, head_reduce=head_reduce, layer_combine=layer_combine,
                    target_scale=target_scale, beta_bce=beta_bce, beta_dice=beta_dice, beta_l2=beta_l2)
        over = {k: v for k, v in over.items() if v is not None}
        if pos_weight_cap is not None:
            over["pos_weight_cap"] = float(pos_weight_cap) if pos_weight_cap > 0 else None
        self.preset = A.get_preset(preset, **over)
        pr = self.preset
        n = C.num_layers(backbone)
        for name, layers in (("v2t_layers", pr.v2t_layers), ("v2v_layers", pr.v2v_layers)):
            bad = [i for i in layers if not 0 <= int(i) < n]
            if bad:
                raise ValueError(f"{where}: {name} has layer {bad[0]}, but the denoiser has layers 0..{n - 1}; set "
                                 f"{name} for this model (the {pr.name} preset's {layers} are for "
                                 f"{pr.backbone})")
        if proj_lr_scale <= 0 or decoder_lr_scale <= 0:
            raise ValueError(f"{where}: proj_lr_scale and decoder_lr_scale must be > 0")
        self.v2t_names = C.layer_names(backbone, pr.v2t_layers, "v2t")
        self.v2v_names = C.layer_names(backbone, pr.v2v_layers, "v2v")
        targets = sorted({f"{name}.{p}" for name in self.v2t_names + self.v2v_names for p in pr.projections})
        self.base_backbone = backbone
        wide = widen_input(backbone, INPUT)
        self.lora = LoraTask(wide, lambda bb: None, rank=pr.lora_rank, alpha=pr.lora_alpha, target_modules=targets)
        bb = self.lora.backbone
        self._base_setup(bb, caption=caption, noise_aug=noise_aug, image_dropout=image_dropout,
                         max_text_length=max_text_length)
        # trainable weights in fp32 (the trainer autocasts the compute)
        self.proj = input_projection(bb)
        cast(self.proj, dtype=torch.float32).requires_grad_(True)
        stride = C.token_stride(bb)
        self.temporal = int(bb.extra.get("vae_scale_factor_temporal", 4))
        dcfg = A.DecoderConfig.for_factors(stride, self.temporal, pr.target_scale)
        heads = ("shared",) if pr.shared_decoder else ("sga", "spa")
        self.decoders = torch.nn.ModuleDict({h: A.MatrixAttnDecoder(dcfg) for h in heads})
        self.decoders.to(bb.device, torch.float32)
        self.markup = markup_of(pr, markup)
        self.select, self.interactions_only = objects, bool(interactions_only)
        self.palette, self.overlap = I.parse_palette(palette, where=where), overlap
        self.chunk = int(chunk)
        self._samples: dict = {}
        self._tokenizers: dict = {}
        self.hp = dict(preset=dataclasses.asdict(pr), proj_lr_scale=float(proj_lr_scale),
                       decoder_lr_scale=float(decoder_lr_scale), markup=self.markup, objects=objects,
                       interactions_only=self.interactions_only, palette=[list(c) for c in self.palette],
                       overlap=overlap, caption=caption, noise_aug=bool(noise_aug), image_dropout=float(image_dropout),
                       max_text_length=int(max_text_length), lora_targets=targets, input=[INPUT, wide.layout.size(INPUT)],
                       decoder=dataclasses.asdict(dcfg))
        self.last_terms: dict = {}

    def _base_setup(self, bb: Backbone, **kw) -> None:
        """The family training base's setup (CogVideoX here)."""
        self._setup(bb, kw["caption"], kw["noise_aug"], kw["image_dropout"], kw["max_text_length"])

    # -- Task protocol
    def trainable_parameters(self):
        return list(self.lora.lora_params) + list(self.proj.parameters()) + list(self.decoders.parameters())

    def param_groups(self):
        return [{"params": list(self.lora.lora_params), "name": "lora", "lr_scale": 1.0},
                {"params": list(self.proj.parameters()), "name": "input_projection",
                 "lr_scale": self.hp["proj_lr_scale"]},
                {"params": list(self.decoders.parameters()), "name": "decoders",
                 "lr_scale": self.hp["decoder_lr_scale"]}]

    def trainable_state_dict(self) -> dict:
        sd = self.lora.trainable_state_dict()
        pre = f"{self.lora.prefix}.{projection_name(self.bb)}"
        sd.update({f"{pre}.{k}": v.detach().cpu().clone() for k, v in self.proj.state_dict().items()})
        sd.update({f"{DECODER_PREFIX}.{k}": v.detach().cpu().clone() for k, v in self.decoders.state_dict().items()})
        return sd

    def load_trainable_state_dict(self, sd: dict) -> None:
        lora, proj, dec = split_state_dict(sd, f"{self.lora.prefix}.{projection_name(self.bb)}")
        self.lora.load_trainable_state_dict(lora)
        self.proj.load_state_dict(proj, strict=True)
        self.decoders.load_state_dict(dec, strict=True)

    def config(self) -> dict:
        return {"task": TASK, **self.hp, "lora": self.lora.hp}

    def save_weights(self, path, sd: dict) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
                  metadata={"format": "pt", META: json.dumps(self.metadata())})

    def metadata(self) -> dict:
        """The file's ``interplay_matrix`` metadata (see the module doc)."""
        return {"v": FORMAT_VERSION, "family": self.bb.family, "variant": self.bb.variant, **self.hp,
                "lora": {"rank": self.lora.hp["rank"], "alpha": self.lora.hp["alpha"],
                         "targets": self.lora.hp["target_modules"], "prefix": self.lora.prefix},
                "projection": projection_name(self.bb)}

    def train(self):
        self.lora.train()
        self.decoders.train()

    def eval(self):
        self.lora.eval()
        self.decoders.eval()

    def enable_gradient_checkpointing(self):
        self.lora.enable_gradient_checkpointing()

    # -- data
    def sample(self, caption: str, masks: torch.Tensor, objects=(), driven=(), events=()) -> MatrixSample:
        """One clip's prompt, token sets and ID tracks (cached per caption and object list)."""
        key = (caption, json.dumps(objects, sort_keys=True, default=str), tuple(int(i) for i in driven))
        if key not in self._samples:
            m = torch.as_tensor(masks)
            text, sel = clip_prompt(caption, objects, driven, events, markup=self.markup, select=self.select,
                                    interactions_only=self.interactions_only, num_masks=m.shape[0])
            rows = P.embedding_rows(self.bb.text_encoder) if self.bb.text_encoder is not None else None
            mp, toks, tok = P.prepare(text, self.bb.tokenizer, markup=self.markup, max_length=self.max_text_length,
                                      rows=rows, where="MATRIX training")
            tracks = (m[sel] >= 0.5) if sel else torch.zeros((0, *m.shape[1:]), dtype=torch.bool)
            inter = [(it["sub_id"], it["obj_id"]) for it in toks.interactions]
            self._samples[key] = MatrixSample(mp.text, tok, toks, tracks, inter)
        return self._samples[key]

    def prompt_embeds(self, captions: list[str]) -> torch.Tensor:
        """As the base, with each prompt encoded by its own tokenizer (the <idk>-extended copy in tokens mode)."""
        for c in set(captions) - set(self._prompts):
            tok = self._tokenizers.get(c, self.bb.tokenizer)
            self._prompts[c] = cvx.encode_prompt(self.bb.replace(tokenizer=tok), [c], self.max_text_length)[0].cpu()
        return torch.stack([self._prompts[c] for c in captions]).to(self.bb.device, self.bb.dtype)

    def _samples_of(self, batch: dict, b: int) -> list[MatrixSample]:
        caps = batch.get("caption")
        caps = [caps] * b if isinstance(caps, str) else list(caps or [""] * b)
        masks = batch.get("masks")
        if masks is None:
            raise ValueError("MATRIX training: the batch has no 'masks' (instance mask tracks); use a sandbox-format "
                             "dataset with masks (e.g. the 'multi' preset)")
        def per_clip(key):
            v = batch.get(key)
            return [()] * b if v is None else list(v)

        objs, drv, evs = per_clip("objects"), per_clip("driven"), per_clip("events")
        out = []
        for i in range(b):
            d = drv[i].tolist() if isinstance(drv[i], torch.Tensor) else list(drv[i])
            out.append(self.sample(self.caption if self.caption is not None else caps[i], masks[i], objs[i], d,
                                   evs[i]))
        return out

    def id_map_latent(self, samples: list[MatrixSample], hw: tuple[int, int], f: int) -> torch.Tensor:
        """[B, f, C, h, w]: each sample's first-frame palette map, VAE-encoded as a one-frame video (posterior mode),
        zeros after frame 0, like the I2V image."""
        imgs = []
        for s in samples:
            idm = I.build_id_map(s.tracks[:, :1] if s.tracks.shape[0] else torch.zeros(0, 1, *hw, dtype=torch.bool),
                                 self.palette, self.overlap, where="MATRIX training")
            imgs.append(idm.image[0])
        return cvx.image_condition(self.bb, torch.stack(imgs), f)

    def id_map_input(self, samples: list[MatrixSample], num_frames: int, height: int, width: int) -> torch.Tensor:
        """The widened input part of a batch (the family's layout): CogVideoX :meth:`id_map_latent`."""
        return self.id_map_latent(samples, (height, width), cvx.latent_frames(self.bb, num_frames))

    # -- loss
    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        t = self.terms(batch, generator)
        self.last_terms = {k: float(v.detach()) for k, v in t.items()}
        return A.total_loss(t["dm"], t["sga"], t["spa"], self.preset, timestep_weight=1.0)  # v-pred: unit weight

    def terms(self, batch: dict, generator: torch.Generator) -> dict:
        """{"dm": L_DM, "sga": L_SGA, "spa": L_SPA} of one batch (a zero for a loss whose lambda is 0)."""
        frames = self._frames(batch)
        b, F_, H, W = frames.shape[:4]
        samples = self._samples_of(batch, b)
        for s in samples:
            self._tokenizers[s.text] = s.tokenizer
        pr = self.preset
        inputs = {INPUT: self.id_map_input(samples, F_, H, W)}
        use_sga, use_spa = pr.lambda_sga != 0, pr.lambda_spa != 0
        atts: list = []
        cap = None
        if use_sga or use_spa:
            targets = [C.MapTargets.from_prompt(s.tokens, s.tracks[:, 0] if s.tracks.shape[0] else None, verbs_v2v=False)
                       for s in samples]
            cap = C.MatrixCapture(self.v2t_names if use_sga else (), self.v2v_names if use_spa else (), targets,
                                  mode=pr.map_mode, head_reduce=pr.head_reduce, chunk=self.chunk, keep_grad=True,
                                  row="all")
            atts.append(cap)
        elif self.bb.dtype != torch.float32:
            atts.append(Attachment())  # the base autocasts fp32 trainables only when something is attached
        l_dm = self._loss({**batch, "_frames": frames, "caption": [s.text for s in samples]}, generator,
                          attachments=atts, inputs=inputs)
        l_sga = l_spa = l_dm.new_zeros(())
        if cap is not None:
            sga, spa = [], []
            for i, s in enumerate(samples):
                if use_sga:
                    sga.append(self._align(cap, i, s, "sga", frames.shape[1]))
                if use_spa:
                    spa.append(self._align(cap, i, s, "spa", frames.shape[1]))
            l_sga = torch.stack(sga).mean() if sga else l_sga
            l_spa = torch.stack(spa).mean() if spa else l_spa
        return {"dm": l_dm, "sga": l_sga, "spa": l_spa}

    def _align(self, cap: C.MatrixCapture, i: int, s: MatrixSample, kind: str, num_frames: int) -> torch.Tensor:
        """L_SGA or L_SPA of sample ``i`` (0 when it has no aligned group)."""
        pr = self.preset
        if not s.tracks.shape[0]:
            return torch.zeros((), device=self.bb.device)
        roles = pr.sga_roles if kind == "sga" else pr.spa_roles
        if roles != ("id",) and not s.interactions:
            return torch.zeros((), device=self.bb.device)
        tgt, groups, present = A.role_targets(s.tracks, pr, kind, s.interactions)
        map_kind = "v2t" if kind == "sga" else "v2v"
        layers = self.v2t_names if kind == "sga" else self.v2v_names
        names = []
        for g, group in enumerate(groups):
            row = []
            for r, ids in enumerate(group):
                role = roles[r]
                row.append(f"verb{ids[0]}>{ids[1]}" if role == "verb" else f"id{ids[0]}")
            names.append(row)
        have = {key[2] for key in cap.live if key[0] in layers and key[1] == map_kind and key[3] == i}
        present = torch.as_tensor([bool(p) and all(n in have for n in row) for p, row in zip(present, names)])
        if not bool(present.any()):
            return torch.zeros((), device=self.bb.device)
        dec = self.decoders["shared" if pr.shared_decoder else kind]
        keep = [g for g in range(len(names)) if present[g]]
        target = A.pixel_targets(tgt[keep], pr.target_scale).to(self.bb.device)
        flat = [n for g in keep for n in names[g]]

        def decode(layer_maps):
            lg = dec(torch.stack(layer_maps).float())  # [N, 1, F', H', W']
            return lg[:, 0].reshape(len(keep), len(names[0]), *lg.shape[2:])[:, :, :num_frames]

        if pr.layer_combine == "mean_maps" or len(layers) == 1:
            maps = [A.combine_layers([cap.map(layer, map_kind, n, i) for layer in layers]) for n in flat]
            return A.alignment_loss(decode(maps), target, pr)
        return torch.stack([A.alignment_loss(decode([cap.map(layer, map_kind, n, i) for n in flat]), target, pr)
                            for layer in layers]).mean()

    def output(self, strength: float | None = None) -> Backbone:
        """A new bundle on the input backbone with the trained LoRA and projection live and frozen, at ``strength``
        (None: the preset's inference strength), as :func:`load_matrix` would give from the saved file."""
        return apply_matrix_weights(self.base_backbone, self.trainable_state_dict(), self.metadata(), strength)


def _ints(v):
    if v is None:
        return None
    if isinstance(v, str):
        return tuple(int(x) for x in v.replace(" ", "").split(",") if x)
    if isinstance(v, int):
        return (v,)
    return tuple(int(x) for x in v)


# ------------------------------------------------------------------------------------------ the weights file
def split_state_dict(sd: dict, proj_prefix: str) -> tuple[dict, dict, dict]:
    """(LoRA keys, projection {weight, bias}, decoders {<head>.<...>}) of a MATRIX state dict."""
    lora = {k: v for k, v in sd.items() if ".lora_" in k}
    proj = {k[len(proj_prefix) + 1:]: v for k, v in sd.items() if k.startswith(proj_prefix + ".")}
    dec = {k[len(DECODER_PREFIX) + 1:]: v for k, v in sd.items() if k.startswith(DECODER_PREFIX + ".")}
    rest = set(sd) - set(lora) - {f"{proj_prefix}.{k}" for k in proj} - {f"{DECODER_PREFIX}.{k}" for k in dec}
    if rest:
        raise ValueError(f"MATRIX: unexpected weights {sorted(rest)[:3]} (expected LoRA, {proj_prefix}.* and "
                         f"{DECODER_PREFIX}.*)")
    return lora, proj, dec


def read_matrix(path) -> tuple[dict, dict]:
    """(state dict, interplay_matrix metadata) of a MATRIX weights file; errors name the file and the fix."""
    from ..weights import read_safetensors

    path = Path(path)
    sd, raw = read_safetensors(path, "MATRIX loader")
    if META not in raw:
        raise ValueError(f"MATRIX loader: {path.name} has no '{META}' metadata; it is not a MATRIX weights file (train "
                         "one with the Train MATRIX node; a plain LoRA goes to the LoRA Loader)")
    try:
        meta = json.loads(raw[META])
    except json.JSONDecodeError as ex:
        raise ValueError(f"MATRIX loader: {path.name}: its '{META}' metadata is not JSON ({ex}); save it again") from ex
    if not isinstance(meta, dict) or meta.get("v") != FORMAT_VERSION:
        raise ValueError(f"MATRIX loader: {path.name} has format version {meta.get('v') if isinstance(meta, dict) else '?'}"
                         f"; this pack reads version {FORMAT_VERSION}")
    return sd, meta


def apply_matrix_weights(bb: Backbone, sd: dict, meta: dict, strength: float | None = None,
                         name: str = "MATRIX") -> Backbone:
    """A new bundle: ``bb`` widened for the ID map, the trained projection loaded, the LoRA live at ``strength``
    (None: the preset's inference strength, 1.0 paper, 0.5 code). ``bb`` is unchanged."""
    from .lora import add_lora_weights

    where = "MATRIX loader"
    if meta.get("family") != bb.family:
        raise ValueError(f"{where}: {name} was trained on {meta.get('family')}; the backbone is {bb.family}")
    in_name, channels = meta["input"]
    wide = widen_input(bb, in_name, int(channels))
    lo = meta["lora"]
    lora, proj, _ = split_state_dict(sd, f"{lo['prefix']}.{meta['projection']}")
    mod = input_projection(wide)
    own = mod.state_dict()
    if set(proj) != set(own) or any(tuple(proj[k].shape) != tuple(own[k].shape) for k in own):
        got = {k: tuple(v.shape) for k, v in proj.items()}
        raise ValueError(f"{where}: {name}'s input projection {got} does not fit this backbone's "
                         f"{ {k: tuple(v.shape) for k, v in own.items()} }; it was trained for a different model")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(proj[k].to(v.dtype))
    if strength is None:
        strength = float(meta.get("preset", {}).get("inference_lora_strength", 1.0))
    out = add_lora_weights(wide, lora, alpha=float(lo["alpha"]), strength=float(strength), prefix=lo["prefix"],
                           name=name)
    length = meta.get("max_text_length")
    cfg = out.denoiser.config
    if length and hasattr(cfg, "max_text_seq_length") and int(length) != int(cfg.max_text_seq_length or 0):
        # prompts are encoded at the length MATRIX trained with (the denoiser here is the bundle's own copy)
        out.denoiser.register_to_config(max_text_seq_length=int(length))
    extra = dict(out.extra)
    if out.family == "wan" and not meta.get("preset", {}).get("image_context", True):
        extra["clip"] = False  # the code preset trains (and so samples) with no CLIP context in cross-attention
    extra["matrix"] = {"preset": meta.get("preset", {}).get("name"), "palette": meta.get("palette"),
                       "overlap": meta.get("overlap"), "markup": meta.get("markup"), "strength": float(strength)}
    return out.replace(extra=extra)


def load_matrix(bb: Backbone, path, strength: float | None = None) -> Backbone:
    """:func:`apply_matrix_weights` of the file at ``path``."""
    sd, meta = read_matrix(path)
    return apply_matrix_weights(bb, sd, meta, strength, name=Path(path).name)
