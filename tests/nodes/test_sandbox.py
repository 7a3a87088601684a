import numpy as np
import pytest
import torch

from interplay.models.conditions.velocity import velocity_video
from interplay.models.sandbox.dataset import write_clip
from interplay.models.sandbox.types import SceneClip
from interplay.nodes.sandbox import (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, InterplayLoadSandboxClip,
                                     InterplaySandboxPreview, InterplaySandboxScene, InterplaySceneInfo)


@pytest.fixture(scope="module")
def push():
    return InterplaySandboxScene().make("push", 3, 40, 32, 5, 8.0)


def test_scene_node_outputs(push):
    frames, driven, scene, fps = push
    assert frames.shape == (5, 32, 40, 3) and frames.dtype == torch.float32 and 0 <= frames.min() <= frames.max() <= 1
    assert isinstance(scene, SceneClip) and fps == 8.0
    expect = torch.from_numpy(scene.masks[scene.driven].any(0)).float()
    assert driven.shape == (5, 32, 40) and torch.equal(driven, expect) and driven.sum() > 0
    again = InterplaySandboxScene().make("push", 3, 40, 32, 5, 8.0)
    assert torch.equal(again[0], frames)


def test_pusher_scene_gives_the_hand_mask():
    _, driven, scene, _ = InterplaySandboxScene().make("pusher", 0, 32, 32, 3, 8.0)
    assert torch.equal(driven, torch.from_numpy(scene.pusher_mask).float()) and driven.sum() > 0


def test_scene_info_drives_the_velocity_encoding(push):
    _, _, scene, _ = push
    mask, caption, vx, vy, n = InterplaySceneInfo().info(scene, 0)
    assert mask.shape == (5, 32, 40) and n == len(scene.objects) and caption == scene.caption
    assert (vx, vy) == pytest.approx(tuple(scene.vel_control[0, 0, :2].tolist()))
    assert np.hypot(vx, vy) == pytest.approx(float(np.linalg.norm(scene.vel_world[0, 0])), rel=1e-5)
    video = velocity_video(mask[:1][None], torch.tensor([[vx, vy]]))
    on = mask[0] > 0.5
    if on.any():
        assert video[0][on][:, 0].unique().numel() == 1
    pm = InterplaySceneInfo().info(scene, -1)[0]
    assert pm.sum() == 0
    with pytest.raises(ValueError, match="object_index"):
        InterplaySceneInfo().info(scene, 40)


def test_preview_tints_masks_and_draws_arrows(push):
    frames, _, scene, _ = push
    (img,) = InterplaySandboxPreview().preview(scene, 0.0, 0.0, 1)
    assert torch.allclose(img, frames)  # no tint, no arrows: the frames themselves
    (tinted,) = InterplaySandboxPreview().preview(scene, 0.5, 0.0, 1)
    m = torch.from_numpy(scene.masks.any(0))
    assert torch.equal(tinted[~m], frames[~m]) and not torch.equal(tinted[m], frames[m])
    (big,) = InterplaySandboxPreview().preview(scene, 0.0, 3.0, 2)
    assert big.shape == (5, 64, 80, 3)
    plain = frames.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert (big - plain).abs().amax() > 0.2  # arrows drawn on the moving object


def test_load_clip_node(tmp_path, push):
    _, _, scene, _ = push
    from interplay.models import runtime

    write_clip(scene, runtime.input_directory() / "c")
    frames, driven, back, fps = InterplayLoadSandboxClip().load("c")
    assert torch.equal(frames, push[0]) and torch.equal(driven, push[1]) and fps == 8.0
    write_clip(scene, runtime.output_directory() / "d")  # relative names: input first, then output
    assert torch.equal(InterplayLoadSandboxClip().load("d")[0], frames)
    assert torch.equal(InterplayLoadSandboxClip().load(str(runtime.input_directory() / "c"))[0], frames)
    with pytest.raises(FileNotFoundError, match="clip.json"):
        InterplayLoadSandboxClip().load("missing")


def test_node_metadata():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name.startswith("Interplay") and NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Interplay)")
        assert cls.CATEGORY == "Interplay/sandbox" and cls.DESCRIPTION
        specs = cls.INPUT_TYPES()
        for spec in [*specs["required"].values(), *specs.get("optional", {}).values()]:
            assert spec[1].get("tooltip")
    assert InterplaySandboxScene.INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] is True


def test_scene_node_scripted_camera_keys():
    _, _, scene, _ = InterplaySandboxScene().make("push", 1, 32, 32, 4, 8.0, camera_keys="W, -, left")
    assert scene.camera["keys"] == ["W", "", "left"]
    assert scene.camera["world_to_camera"][0] != scene.camera["world_to_camera"][3]
    with pytest.raises(ValueError, match="camera_keys"):
        InterplaySandboxScene().make("push", 1, 32, 32, 4, 8.0, camera_keys="W,jump")
