import json

import numpy as np
import pytest
import torch

from interplay.models.backbones.base import Backbone
from interplay.models.tokenizer import build_tokenizer
from interplay.models.sandbox.presets import generate_scene
from interplay.nodes import graph
from interplay.nodes import matrix as N

PROMPT = "[the red box](1) [pushes](1>2) [the blue cylinder](2) to the left."


def test_graph_scene_to_id_map_and_back_prompt_and_scores():
    answers = {"videos": [{"id": "v", "interactions": [["yes"] * 6 + ["no"] * 4],
                           "emergence": [False] * 4, "disappearance": [True] + [False] * 3}]}
    prompt = {
        "1": {"class_type": "InterplaySandboxScene",
              "inputs": {"preset": "multi", "seed": 0, "width": 32, "height": 32, "frames": 9, "fps": 8.0}},
        "2": {"class_type": "InterplayMatrixIdMap",
              "inputs": {"overlap": "higher_id", "palette": "", "scene": ["1", 2], "objects": "2,1"}},
        "3": {"class_type": "InterplayMatrixIdMapFromImage",
              "inputs": {"image": ["2", 0], "palette": "", "max_distance": 64.0, "num_ids": 2}},
        "4": {"class_type": "InterplayMatrixPrompt", "inputs": {"prompt": PROMPT, "markup": "auto", "id_tags": "auto"}},
        "5": {"class_type": "InterplayMatrixInterGenEval", "inputs": {"answers_json": json.dumps(answers)}},
    }
    out = graph.execute(prompt, targets=["3", "4", "5"])
    clip = generate_scene("multi", 0, (32, 32), frames=9)
    image, idm, legend = out["2"]
    assert image.shape == (1, 32, 32, 3) and idm.masks.shape == (2, 9, 32, 32)
    assert torch.equal(idm.masks[0], torch.from_numpy(clip.id_map == 2))  # ID 1 = object 2
    masks, back, _ = out["3"]
    assert masks.shape == (2, 32, 32) and torch.equal(masks.bool(), idm.masks[:, 0])
    name = f"{clip.objects[1]['colour']} {clip.objects[1]['shape']}"
    assert legend.splitlines()[0] == f"id1 = red: {name}"
    text, spans = out["4"]
    assert text == "the red box pushes the blue cylinder to the left."
    assert json.loads(spans)["ids"]["2"]["text"] == ["blue cylinder"]
    report, kisa, sgi, if_, spi = out["5"]
    spi_v = (1 + (1 - 5 / 4)) / 2  # 0.375
    assert spi == pytest.approx(spi_v) and kisa == pytest.approx(spi_v) and sgi == 0.0
    assert if_ == pytest.approx(spi_v / 2) and json.loads(report)["videos"][0]["D"] == pytest.approx(-0.25)
    assert "IF 0.188" in out.ui["5"]["text"][0]


def test_id_map_from_masks_gaps_resize_and_warnings():
    a = torch.zeros(3, 16, 16)
    a[:, :8, :8] = 1
    c = torch.zeros(1, 16, 16)
    c[0, 8:, 8:] = 1
    res = N.InterplayMatrixIdMap().build("higher_id", "", mask_1=a, mask_3=c, labels="man, , cup", width=32, height=32)
    image, idm, legend = res["result"]
    assert idm.masks.shape == (3, 3, 32, 32) and idm.ids == [1, 3] and not idm.masks[1].any()
    assert torch.equal(idm.masks[2, 2], idm.masks[2, 0])  # a one-frame mask is held over the track
    assert (image[0, 31, 31] * 255).round().tolist() == [0, 0, 255]  # id3 blue
    assert legend.splitlines() == ["id1 = red: man", "id2 = green (absent from frame 0)", "id3 = blue: cup"]
    assert "WARNING" not in res["ui"]["text"][0]
    empty = N.InterplayMatrixIdMap().build("higher_id", "", masks=torch.zeros(2, 8, 8))
    assert "all black" in empty["ui"]["text"][0] and float(empty["result"][0].sum()) == 0.0
    with pytest.raises(ValueError, match="exactly one source"):
        N.InterplayMatrixIdMap().build("higher_id", "", mask_1=a, masks=a)
    with pytest.raises(ValueError, match="InterplayMatrixIdMap: .*at most 5"):
        N.InterplayMatrixIdMap().build("higher_id", "", masks=torch.zeros(6, 8, 8))
    with pytest.raises(ValueError, match="'mask_2' is \\(8, 8\\)"):
        N.InterplayMatrixIdMap().build("higher_id", "", mask_1=a, mask_2=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="both 'width' and 'height'"):
        N.InterplayMatrixIdMap().build("higher_id", "", mask_1=a, width=32)
    six = generate_scene("multi", 3, (32, 32), frames=5)
    with pytest.raises(ValueError, match="InterplayMatrixIdMap: object 9 is not in the scene"):
        N.InterplayMatrixIdMap().build("higher_id", "", scene=six, objects="9")


def test_id_map_from_image_reports_unmatched():
    img = torch.zeros(1, 10, 10, 3)
    img[0, :5, :, 0] = 250 / 255  # near red
    img[0, 9, :, :] = 0.5  # a grey row: 10 % of the pixels match nothing
    masks, idm, _ = N.InterplayMatrixIdMapFromImage().read(img, "", 64.0)["result"]
    assert masks.shape == (5, 10, 10) and int(masks[0].sum()) == 50 and idm.ids == [1]
    text = N.InterplayMatrixIdMapFromImage().read(img, "", 64.0)["ui"]["text"][0]
    assert "unmatched pixels: 10 of 100" in text and "10.0%" in text
    with pytest.raises(ValueError, match="InterplayMatrixIdMapFromImage: .*JSON"):
        N.InterplayMatrixIdMapFromImage().read(img, "[[0,0", 64.0)


def tiny_backbone(rows):
    from kit.tiny import new_t5

    tok = build_tokenizer()
    return Backbone(family="cogvideox", variant="tiny", denoiser=torch.nn.Linear(1, 1), tokenizer=tok,
                    text_encoder=new_t5(rows))


def test_prompt_node_with_a_backbone():
    tags = "a <id1> box pushes the <id2> cylinder"
    text, spans = N.InterplayMatrixPrompt().prepare(tags, "auto", "auto", backbone=tiny_backbone(330))["result"]
    d = json.loads(spans)
    assert text == "a box pushes the cylinder" and d["id_tags"] == "words" and d["ids"]["2"]["tokens"] == [4]
    res = N.InterplayMatrixPrompt().prepare(tags, "auto", "auto", backbone=tiny_backbone(340))
    text, spans = res["result"]
    d = json.loads(spans)
    assert text == tags and d["id_tags"] == "tokens" and d["ids"]["1"]["tokens"] == [1] and d["max_length"] == 226
    assert "untrained padding" in res["ui"]["text"][0]
    cut = N.InterplayMatrixPrompt().prepare(PROMPT, "paper_spans", "auto", backbone=tiny_backbone(330), max_length=6)
    assert "truncated at 6 tokens: id2" in cut["ui"]["text"][0]
    plain = N.InterplayMatrixPrompt().prepare("a box slides", "auto", "auto")
    assert "no markup found" in plain["ui"]["text"][0]
    with pytest.raises(ValueError, match="InterplayMatrixPrompt: id_tags 'tokens' needs ids up to 334"):
        N.InterplayMatrixPrompt().prepare(tags, "id_tags", "tokens", backbone=tiny_backbone(330))


def test_intergeneval_node_errors_name_the_node():
    with pytest.raises(ValueError, match="InterplayMatrixInterGenEval.*missing"):
        N.InterplayMatrixInterGenEval().score(json.dumps({"interactions": [["yes"] * 9], "emergence": [False],
                                                          "disappearance": [False]}))
    assert np.isclose(N.InterplayMatrixInterGenEval().score(N.InterplayMatrixInterGenEval.INPUT_TYPES()
                                                            ["required"]["answers_json"][1]["default"])["result"][3],
                      1.0)


# ================================================================================================ capture, training
@pytest.fixture(scope="module")
def cbb(tiny_cogvideox):
    from interplay.models.backbones import cogvideox as cog

    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def multi_src(tmp_path_factory):
    from interplay.models.sandbox.dataset import write_clip

    root = tmp_path_factory.mktemp("multi_nodes")
    for s in (0, 1):
        write_clip(generate_scene("multi", seed=s, size=(64, 64), frames=9), root / f"clip{s:03d}")
    return root


@pytest.fixture
def multi_clips(multi_src):
    """The clips linked into this test's input folder (nodes read datasets only inside ComfyUI's folders)."""
    from kit.tiny import _link_or_copy

    from interplay.models import runtime

    dst = runtime.input_directory() / "multi"
    _link_or_copy(multi_src, dst)
    return dst


SAMPLE = dict(negative="", width=32, height=32, num_frames=9, steps=2, cfg=6.0, dynamic_cfg=False, scheduler="ddim",
              seed=3, decode=False)


def _img():
    return torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))


def test_guidance_node_in_the_unchanged_sampler_and_scale_zero(cbb):
    from interplay.nodes.cogvideox import InterplayCogVideoXSampler
    from interplay.nodes.controls import InterplayApplyControl  # noqa: F401  (the chain it composes with)

    sampler = InterplayCogVideoXSampler()
    plain = sampler.sample(cbb, _img(), "a red box", **SAMPLE)[1]["samples"]
    off = N.InterplayMatrixGuidance().build(cbb, "cag", "default", 0.0, 0.0, 1.0)
    assert "(off)" in off["ui"]["text"][0]
    zero = sampler.sample(cbb, _img(), "a red box", **SAMPLE, controls=off["result"][0])[1]["samples"]
    assert torch.equal(zero, plain)
    cag = N.InterplayMatrixGuidance().build(cbb, "cag", "default", 2.0, 0.0, 1.0)["result"][0]
    both = N.InterplayMatrixGuidance().build(cbb, "cmg", "0", 2.0, 0.0, 1.0, controls=cag)["result"][0]
    assert [bc.branch.config["layers"] for bc in both.items] == [[1], [0]]
    guided = sampler.sample(cbb, _img(), "a red box", **SAMPLE, controls=both, control_weight=0.5)[1]["samples"]
    assert (guided - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="layers 0..1"):
        N.InterplayMatrixGuidance().build(cbb, "cmg", "7,11", 1.0, 0.0, 1.0)


def test_capture_node_errors_and_word_maps(cbb):
    tok_spans = N.InterplayMatrixPrompt().prepare(PROMPT, "auto", "auto", backbone=cbb)["result"][1]
    no_tok = N.InterplayMatrixPrompt().prepare(PROMPT, "auto", "auto")["result"][1]
    node = N.InterplayMatrixAttentionCapture()
    with pytest.raises(ValueError, match="no token positions"):
        node.build(cbb, no_tok, "all", "all", "softmax", "mean")
    with pytest.raises(ValueError, match="is not in the prompt"):
        node.build(cbb, tok_spans, "all", "all", "softmax", "mean", words="giraffe")
    out = node.build(cbb, tok_spans, "1", "0", "softmax", "mean", words="left")
    assert "'word:left'" in out["ui"]["text"][0] and "v2v" in out["ui"]["text"][0]
    sess = out["result"][1]
    with pytest.raises(ValueError, match="capture is empty"):
        sess.result()
    with pytest.raises(ValueError, match="nothing to capture"):
        node.build(cbb, N.InterplayMatrixPrompt().prepare("a box", "auto", "auto", backbone=cbb)["result"][1],
                   "all", "all", "softmax", "mean")


def test_id_map_input_warns_on_black_and_loader_errors(cbb, tmp_path):
    from interplay.models import runtime

    out = N.InterplayMatrixIdMapInput().build(image=torch.zeros(1, 8, 8, 3))
    assert out["ui"]["text"][0].startswith("WARNING") and out["result"][0].names == ("id_map",)
    with pytest.raises(ValueError, match="exactly one"):
        N.InterplayMatrixIdMapInput().build()
    from interplay.nodes.cogvideox import InterplayCogVideoXSampler

    with pytest.raises(ValueError, match="takes no extra inputs"):  # a plain backbone has no id_map channels
        InterplayCogVideoXSampler().sample(cbb, _img(), "a box", **SAMPLE, inputs=out["result"][0])
    runtime.set_models_root(tmp_path / "models")
    with pytest.raises(ValueError, match="no MATRIX file picked"):
        N.InterplayMatrixLoader().load(cbb, "", -1.0)


def test_train_matrix_node_trains_resumes_and_samples(cbb, multi_clips, tmp_path):
    from interplay.models import runtime
    from interplay.nodes.cogvideox import InterplayCogVideoXSampler

    runtime.set_models_root(tmp_path / "models")
    kw = dict(steps=2, lr=1e-3, batch_size=1, grad_accum=1, precision="fp32", seed=0, checkpoint_every=1, resume=True)
    extra = json.dumps({"v": 1, "options": {"max_text_length": 32}, "train": {"schedule": "constant"}})
    node = N.InterplayTrainMatrix()
    bb, curve, path = node.train(cbb, str(multi_clips), "mx", 9, "paper", "0", "1", 4, 0.5, 0.5, **kw,
                                 extra=extra)["result"]
    assert path.endswith("interplay/mx/checkpoint.safetensors") and curve.shape[0] == 1
    assert bb.layout.names[-1] == "id_map" and not cbb.layout.has("id_map")
    assert N.matrix_choices() == ["interplay/mx/checkpoint.safetensors"]
    again = node.train(cbb, str(multi_clips), "mx", 9, "paper", "0", "1", 4, 0.5, 0.5, **kw, extra=extra)
    assert "resumed from 2" in again["ui"]["text"][0]
    loaded = N.InterplayMatrixLoader().load(cbb, "interplay/mx/checkpoint.safetensors", -1.0)["result"][0]
    assert loaded.denoiser.config.max_text_seq_length == 32  # prompts are encoded at the trained length
    idm = N.InterplayMatrixIdMap().build("higher_id", "", masks=torch.ones(1, 32, 32))["result"][1]
    inputs = N.InterplayMatrixIdMapInput().build(id_map=idm)["result"][0]
    a = InterplayCogVideoXSampler().sample(loaded, _img(), "a box", **SAMPLE, inputs=inputs)[1]["samples"]
    b = InterplayCogVideoXSampler().sample(bb, _img(), "a box", **SAMPLE, inputs=inputs)[1]["samples"]
    torch.testing.assert_close(a, b)  # the node's output backbone is the loaded file
    with pytest.raises(ValueError, match="layers 0..1"):
        node.train(cbb, str(multi_clips), "mx2", 9, "paper", "preset", "preset", 4, 0.5, 0.5, **kw)


def test_layer_analysis_node(cbb, multi_clips):
    rep, table = N.InterplayMatrixLayerAnalysis().analyse(cbb, str(multi_clips), "all", "500", 2, 1, 2)["result"]
    r = json.loads(rep)
    assert r["layers"] == [0, 1] and r["videos"] == ["clip000", "clip001"] and "noun_v2t" in table
    with pytest.raises(ValueError, match="timesteps"):
        N.InterplayMatrixLayerAnalysis().analyse(cbb, str(multi_clips), "all", "1000", 2, 1, 2)


def test_wan_sampler_with_capture_aas_and_guidance_nodes(tiny_wan21):
    """The MATRIX nodes on a Wan backbone: the capture joins the Wan Sampler's controls (cross-attention v2t,
    self-attention v2v), AAS scores it, and guidance at scale 0 is the plain Wan Sampler bitwise."""
    from interplay.models.backbones import wan
    from interplay.nodes.wan import InterplayWanSampler

    wbb = wan.load_wan(tiny_wan21, dtype="fp32", device="cpu")
    spans = N.InterplayMatrixPrompt().prepare(PROMPT, "auto", "auto", backbone=wbb)["result"][1]
    masks = torch.zeros(2, 32, 32)
    masks[0, 0:16, 0:16] = 1
    masks[1, 16:, 16:] = 1
    idm = N.InterplayMatrixIdMap().build("higher_id", "", masks=masks)["result"][1]
    controls, sess = N.InterplayMatrixAttentionCapture().build(wbb, spans, "all", "all", "softmax", "mean",
                                                               id_map=idm)["result"]
    kw = dict(negative="", width=32, height=32, num_frames=5, steps=2, cfg=3.0, cfg_low_noise=0.0, shift=0.0,
              scheduler="unipc", boundary=0.0, seed=3, decode=False, image=_img())
    sampler = InterplayWanSampler()
    plain = sampler.sample(wbb, "a red box pushes a blue cylinder", **kw)[1]["samples"]
    seen = sampler.sample(wbb, "a red box pushes a blue cylinder", **kw, controls=controls)[1]["samples"]
    assert torch.equal(seen, plain)  # the capture observes only
    cap = sess.result()
    assert sorted(cap.layers) == ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]
    assert cap.grid == (2, 2, 2) and cap.names("v2v") == ["id1", "id2", "verb1>2"]
    rep, best, score = N.InterplayMatrixAAS().score(sess, torch.zeros(5, 32, 32, 3), idm, "v2t")["result"]
    assert best in (0, 1) and 0 < score < 1 and set(json.loads(rep)["layers"]) == {"0", "1"}
    off = N.InterplayMatrixGuidance().build(wbb, "cmg", "default", 0.0, 0.0, 1.0)["result"][0]
    zero = sampler.sample(wbb, "a red box pushes a blue cylinder", **kw, controls=off)[1]["samples"]
    assert torch.equal(zero, plain)
    on = N.InterplayMatrixGuidance().build(wbb, "cag", "default", 2.0, 0.0, 1.0)["result"][0]
    guided = sampler.sample(wbb, "a red box pushes a blue cylinder", **kw, controls=on)[1]["samples"]
    assert (guided - plain).abs().max() > 1e-4
