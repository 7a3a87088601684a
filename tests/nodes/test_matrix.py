import json

import numpy as np
import pytest
import torch

from interplay.models.backbones.base import Backbone
from interplay.models.demo.tokenizer import build_tokenizer
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
