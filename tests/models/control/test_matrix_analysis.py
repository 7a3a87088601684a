"""MATRIX layer analysis: on a tiny 4-layer CogVideoX with one planted aligned layer (its q and k pushed together
inside each instance's mask track and on the instance's tokens) every variant ranks that layer first; the CLI
writes the same report and prints the table."""
import json

import pytest
import torch

from interplay.models.backbones import base as B
from interplay.models.backbones import cogvideox as cog
from interplay.models.conditions import matrix_prompt as P
from interplay.models.control import matrix_analysis as MA
from interplay.models.control import matrix_capture as C
from interplay.models.sandbox.dataset import write_clip
from interplay.models.sandbox.presets import generate_scene


@pytest.fixture(scope="module")
def four_layers():
    from diffusers import CogVideoXTransformer3DModel
    from kit import tiny as K

    m = K.new_cogvideox_modules(0)
    torch.manual_seed(5)
    tr = CogVideoXTransformer3DModel(**{**K.COGVIDEOX_TRANSFORMER, "num_layers": 4}).eval()
    return cog.assemble_backbone(tr, m["vae"], m["text_encoder"], m["tokenizer"], K.COGVIDEOX_SCHEDULER,
                                 dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_analysis")
    for s in (0, 1, 3):
        write_clip(generate_scene("multi", seed=s, size=(64, 64), frames=9), root / f"clip{s:03d}")
    return root


class Plant(B.Attachment):
    """Aligns one layer by construction: direction e_k added to q and k of the video tokens inside M_k (token
    grid) and to k of ID k's text tokens (and of its verbs)."""

    def __init__(self, bb, layer, video, alpha=6.0):
        self.layer, self.video, self.alpha = layer, video, alpha
        self.toks = P.prepare(video.prompt, bb.tokenizer, max_length=226)[1]

    def attention_layers(self, ctx):
        return [self.layer]

    def attention(self, ctx, layer, q, k, v, call):
        lat = C.track_grid(self.video.tracks, ctx.grid, 8, 4).flatten(1)
        nt = q.shape[2] - lat.shape[1]
        q, k = q.clone(), k.clone()

        def e(*ids):
            u = torch.zeros(q.shape[-1])
            u[list(ids)] = self.alpha
            return u
        for i, toks in self.toks.ids.items():
            idx = nt + lat[i - 1].nonzero().flatten()
            q[:, :, idx] += e(i)
            k[:, :, idx] += e(i)
            k[:, :, toks] += e(i)
        for it in self.toks.interactions:
            k[:, :, it["verb"]] += e(it["sub_id"], it["obj_id"])
        return call(q, k, v)


def test_planted_aligned_layer_ranks_first_in_every_variant(four_layers, clips):
    vids = MA.videos_from_dataset(clips)
    assert [v.name for v in vids] == ["clip000", "clip001", "clip003"]
    assert [v.tracks.shape[0] for v in vids] == [4, 3, 3]
    layer = cog.attention_layer(2)
    rep = MA.analyse(four_layers, vids, timesteps=(700, 300), top_k=2, n_influential=4, progress=False,
                     attachments=lambda i, v: [Plant(four_layers, layer, v)])
    for var in MA.VARIANTS:
        r = rep["variants"][var]
        assert r["influential"][0] == 2, (var, r["influential"])
        assert r["layers"]["2"]["frequency"] == len(r["videos"]) and len(r["videos"]) >= 2
        assert r["layers"]["2"]["magnitude"] > 2 * max(r["layers"][str(j)]["magnitude"] for j in (0, 1, 3))
    # without the plant no layer stands out like that
    plain = MA.analyse(four_layers, vids, timesteps=(700,), top_k=2, progress=False)
    r = plain["variants"]["noun_v2t"]
    assert max(s["magnitude"] for s in r["layers"].values()) < rep["variants"]["noun_v2t"]["layers"]["2"]["magnitude"] / 2
    text = MA.table_text(rep)
    assert "noun_v2t (3 videos" in text and text.splitlines()[2].split()[0] == "2"
    # success labels give the dominant-layer statistics
    lab = MA.analyse(four_layers, vids, timesteps=(700,), top_k=2, progress=False,
                     success={"clip000": True, "clip001": False, "clip003": True})
    s = lab["variants"]["noun_v2t"]["layers"][str(lab["variants"]["noun_v2t"]["influential"][0])]
    assert s["success_gap"] == pytest.approx(s["mu_success"] - s["mu_all"])


def test_cli_analyse_writes_the_report(clips, tmp_path, capsys):
    from interplay.nodes.cli import main

    out = tmp_path / "report.json"
    rc = main(["matrix", "analyse", "--random", "tiny", "--data", str(clips), "--videos", "2", "--timesteps", "500",
               "--device", "cpu", "--dtype", "fp32", "--json", str(out), "--top-k", "1"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["layers"] == [0, 1] and rep["videos"] == ["clip000", "clip001"] and rep["timesteps"] == [500]
    assert len(rep["variants"]["noun_v2t"]["aas"]) == 2
    assert "noun_v2t (2 videos" in capsys.readouterr().out
    assert main(["matrix", "analyse", "--random", "tiny", "--data", str(clips), "--layers", "5"]) == 2


class WanPlant(B.Attachment):
    """The Wan form of :class:`Plant` on block ``i``: e_k on q and k of the video tokens inside M_k in self-attention
    (v2v), on q of those tokens and k of ID k's text tokens (and its verbs) in cross-attention (v2t)."""

    def __init__(self, bb, i, video, alpha=6.0):
        from interplay.models.backbones import wan

        self.layers = [wan.attention_layer(i, "self"), wan.attention_layer(i, "cross")]
        self.video, self.alpha = video, alpha
        self.toks = P.prepare(video.prompt, bb.tokenizer, max_length=512)[1]

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        lat = C.track_grid(self.video.tracks, ctx.grid, 16, 4).flatten(1)
        q, k = q.clone(), k.clone()

        def e(*ids):
            u = torch.zeros(q.shape[-1])
            u[list(ids)] = self.alpha
            return u
        for i, toks in self.toks.ids.items():
            idx = lat[i - 1].nonzero().flatten()
            q[:, :, idx] += e(i)
            if layer.endswith("attn1"):
                k[:, :, idx] += e(i)
            else:
                k[:, :, toks] += e(i)
        if layer.endswith("attn2"):
            for it in self.toks.interactions:
                k[:, :, it["verb"]] += e(it["sub_id"], it["obj_id"])
        return call(q, k, v)


def test_wan_planted_aligned_layer_ranks_first(tiny_wan21, tmp_path):
    """The analysis on the tiny Wan2.1 I2V (flow-matching reconstruction, cross- and self-attention maps)."""
    from interplay.models.backbones import wan

    bb = wan.load_wan(tiny_wan21, dtype="fp32", device="cpu")
    for s in (0, 1):
        write_clip(generate_scene("multi", seed=s, size=(64, 64), frames=5), tmp_path / f"clip{s:03d}")
    vids = MA.videos_from_dataset(tmp_path)
    rep = MA.analyse(bb, vids, timesteps=(700, 300), top_k=1, n_influential=2, progress=False,
                     attachments=lambda i, v: [WanPlant(bb, 1, v)])
    for var in MA.VARIANTS:
        r = rep["variants"][var]
        assert r["influential"][0] == 1, (var, r["influential"])
        assert r["layers"]["1"]["frequency"] == len(r["videos"]) >= 1
        assert r["layers"]["1"]["magnitude"] > 2 * r["layers"]["0"]["magnitude"], (var, r["layers"])
