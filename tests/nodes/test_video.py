import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.models import video_io as vio
from interplay.nodes import graph
from interplay.nodes import video as nv


def _clip(frames=6, h=32, w=48):
    v = torch.full((frames, h, w, 3), 0.2)
    for t in range(frames):
        v[t, 8:16, 2 + 4 * t:10 + 4 * t] = torch.tensor([0.9, 0.6, 0.2])
    return v


@pytest.fixture
def input_dir(tmp_path, monkeypatch):
    d = tmp_path / "input"
    d.mkdir()
    monkeypatch.setenv("INTERPLAY_INPUT_DIR", str(d))
    return d


def test_load_video_combo_lists_input_folder_and_loads(input_dir):
    vio.save_video(_clip(), input_dir / "b10.webp", fps=12)
    vio.save_video(_clip(), input_dir / "b2.mp4", fps=12)
    (input_dir / "notes.txt").write_text("x")
    from PIL import Image

    Image.fromarray(vio.to_uint8(_clip())[0]).save(input_dir / "a1.png")  # a still image: one frame
    assert nv.InterplayLoadVideo.INPUT_TYPES()["required"]["video"][0] == ["a1.png", "b2.mp4", "b10.webp"]
    still, _, n1 = nv.InterplayLoadVideo().load("a1.png")
    assert n1 == 1 and np.array_equal(vio.to_uint8(still)[0], vio.to_uint8(_clip())[0])
    frames, fps, n = nv.InterplayLoadVideo().load("b10.webp", frame_cap=4, every_nth=1)
    assert (n, fps) == (4, 12.0) and np.array_equal(vio.to_uint8(frames), vio.to_uint8(_clip())[:4])
    frames, fps, n = nv.InterplayLoadVideo().load("b2.mp4", every_nth=2, force_width=24)
    assert frames.shape == (3, 16, 24, 3) and fps == pytest.approx(6.0)


def test_load_video_path_and_errors(input_dir, tmp_path):
    p = vio.save_video(_clip(), runtime.output_directory() / "elsewhere.webp", fps=5)
    frames, fps, _ = nv.InterplayLoadVideo().load("ignored.mp4", path=str(p))
    assert frames.shape == (6, 32, 48, 3) and fps == 5.0
    frames, _, _ = nv.InterplayLoadVideo().load(str(p))  # an absolute path in the combo (API prompts)
    assert frames.shape[0] == 6
    frames, _, _ = nv.InterplayLoadVideo().load("elsewhere.webp [output]")  # ComfyUI's annotated names
    assert frames.shape[0] == 6
    with pytest.raises(FileNotFoundError, match="missing.mp4.*searched"):
        nv.InterplayLoadVideo().load("missing.mp4")
    assert nv.InterplayLoadVideo.VALIDATE_INPUTS(video=str(p)) is True
    outside = vio.save_video(_clip(), tmp_path / "outside.webp", fps=5)
    assert "INTERPLAY_ALLOW_ANY_PATH" in nv.InterplayLoadVideo.VALIDATE_INPUTS(video=str(outside))


def test_load_video_validates_absolute_path_in_graph(input_dir, tmp_path):
    p = vio.save_video(_clip(), input_dir / "sub" / "abs.webp", fps=5)
    prompt = {"1": {"class_type": "InterplayLoadVideo", "inputs": {
        "video": str(p), "frame_cap": 0, "start_frame": 0, "every_nth": 1, "force_width": 0, "force_height": 0}},
        "2": {"class_type": "InterplayPreviewFrames", "inputs": {"images": ["1", 0], "fps": ["1", 1]}}}
    assert graph.validate(prompt, nv.NODE_CLASS_MAPPINGS) == []


def test_load_image_sequence_node(input_dir):
    seq = input_dir / "seq"
    seq.mkdir()
    v = vio.to_uint8(_clip(frames=11))
    for i in range(11):
        Image.fromarray(v[i]).save(seq / f"img{i}.png")
    frames, fps, n = nv.InterplayLoadImageSequence().load("seq", "img*.png", fps=10.0, every_nth=5)
    assert n == 3 and fps == 2.0 and np.array_equal(vio.to_uint8(frames), v[[0, 5, 10]])
    with pytest.raises(FileNotFoundError, match="nope"):
        nv.InterplayLoadImageSequence().load("nope")


def test_save_video_ui_shape_counter_and_round_trip(tmp_path):
    node = nv.InterplaySaveVideo()
    out = node.save(_clip(), "runs/sq", fps=12.0, format="mp4", crf=18)
    assert out["ui"] == {"images": [{"filename": "sq_00001_.mp4", "subfolder": "runs", "type": "output"}],
                         "animated": (True,)}
    path = out["result"][0]
    assert path == str(runtime.output_directory() / "runs" / "sq_00001_.mp4")
    back, fps = vio.load_video(path)
    assert back.shape == (6, 32, 48, 3) and fps == pytest.approx(12.0)
    out2 = node.save(_clip(), "runs/sq", fps=12.0, format="webp", crf=18)
    assert out2["ui"]["images"][0]["filename"] == "sq_00002_.webp"
    back, _ = vio.load_video(out2["result"][0])
    assert np.array_equal(vio.to_uint8(back), vio.to_uint8(_clip()))
    with pytest.raises(ValueError, match="InterplaySaveVideo.*images"):
        node.save(torch.zeros(4, 4, 3), "x", 8.0, "mp4", 18)


def test_preview_goes_to_temp():
    out = nv.InterplayPreviewFrames().preview(_clip(), fps=4.0)
    item = out["ui"]["images"][0]
    assert item["type"] == "temp" and out["ui"]["animated"] == (True,)
    f = runtime.temp_directory() / item["subfolder"] / item["filename"]
    back, fps = vio.load_video(f)
    assert back.shape == (6, 32, 48, 3) and fps == 4.0


def test_frames_mask_nodes_round_trip():
    m = (torch.rand(3, 5, 7) > 0.5).float()
    frames = nv.InterplayMaskToFrames().convert(m)[0]
    assert frames.shape == (3, 5, 7, 3)
    assert torch.equal(nv.InterplayFramesToMask().convert(frames, "luminance", 0.5)[0], m)
    soft = nv.InterplayFramesToMask().convert(frames * 0.25, "green", -1.0)[0]
    assert torch.allclose(soft, m * 0.25)


def test_node_metadata_complete():
    for name, cls in nv.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("Interplay") and cls.DESCRIPTION and cls.CATEGORY == "Interplay/video"
        assert nv.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Interplay)")
        for cat in cls.INPUT_TYPES().values():
            for inp, spec in cat.items():
                assert "tooltip" in spec[1], f"{name}.{inp} has no tooltip"


def test_headless_previews_do_not_pile_up(tmp_path):
    """Each `interplay run` starts by clearing Preview Frames' files from the temp folder, as ComfyUI clears its
    temp folder at start: after three runs only the last run's previews are there; other files stay."""
    import json

    prompt = {"1": {"class_type": "InterplaySandboxScene",
                    "inputs": {"preset": "push", "seed": 0, "width": 32, "height": 32, "frames": 2, "fps": 8.0}},
              "2": {"class_type": "InterplayPreviewFrames", "inputs": {"images": ["1", 0], "fps": 8.0}},
              "3": {"class_type": "InterplayPreviewFrames", "inputs": {"images": ["1", 0], "fps": 4.0}}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(prompt))
    out = tmp_path / "out"
    (out / "temp").mkdir(parents=True)
    (out / "temp" / "mine.webp").write_bytes(b"x")
    for _ in range(3):
        assert graph.cli_main([str(wf), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "temp").iterdir()) == [
        "interplay_preview_00001_.webp", "interplay_preview_00002_.webp", "mine.webp"]
