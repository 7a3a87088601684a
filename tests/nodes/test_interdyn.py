"""InterDyn nodes: loaders from model folders, driving mask + edits, sampler, compare output."""
import json

import pytest
import torch

from interplay.models import runtime
from interplay.models.backbones import svd, svd_convert
from interplay.nodes import interdyn as nd
from interplay.nodes import svd as sv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    bb = svd.random_backbone("tiny", seed=0)
    root = tmp_path_factory.mktemp("models")
    svd.save_diffusers_folder(bb, root / "diffusers" / "tiny_svd")
    svd_convert.save_single_file(bb, root / "checkpoints" / "svd_tiny.safetensors")
    return bb, root


def test_loader_folder_and_single_file(tiny):
    bb, root = tiny
    runtime.set_models_root(root)
    choices = sv.InterplaySVDLoader.INPUT_TYPES()["required"]["model"][0]
    assert "diffusers/tiny_svd" in choices and "svd_tiny.safetensors" in choices
    (a,) = sv.InterplaySVDLoader().load("diffusers/tiny_svd", sv.FROM_CHECKPOINT, "fp32", "none", 14)
    (b,) = sv.InterplaySVDLoader().load("svd_tiny.safetensors", sv.FROM_CHECKPOINT, "fp32", "none", 14)
    for m in ("denoiser", "vae", "image_encoder"):
        sa, sb = getattr(a, m).state_dict(), getattr(b, m).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(FileNotFoundError, match="not found; searched"):
        sv.InterplaySVDLoader().load("missing.safetensors", sv.FROM_CHECKPOINT, "fp32", "none", 14)


def test_branch_loader_new_and_saved(tiny, tmp_path):
    bb, root = tiny
    runtime.set_models_root(root)
    with pytest.raises(ValueError, match="connect 'backbone'"):
        nd.InterplayInterDynBranchLoader().load(nd.NEW_BRANCH, "auto")
    (br,) = nd.InterplayInterDynBranchLoader().load(nd.NEW_BRANCH, "auto", backbone=bb)
    assert br.config["residual_rule"] == "once" and br.kind == "interdyn"
    from interplay.models.control import interdyn
    interdyn.save_branch(br, root / "controlnet" / "interdyn_tiny", layout="diffusers")
    (got,) = nd.InterplayInterDynBranchLoader().load("interdyn_tiny", "quirk", backbone=bb)
    assert got.config["residual_rule"] == "quirk"


def _masks(F=6, H=64, W=64):
    m = torch.zeros(F, H, W)
    for t in range(F):
        m[t, 20:36, 4 + 6 * t:20 + 6 * t] = 1
    return m


def test_driving_mask_and_edit():
    ctrl, cond, prev, first, masks = nd.InterplayDrivingMask().render(
        4, 64, 64, 0.0, 6.0, 0, "center", masks=_masks(), video=torch.rand(6, 64, 64, 3))
    assert ctrl.kind == "hand_mask" and ctrl.video.shape == (4, 64, 64, 3)
    assert float(ctrl.video.min()) == -1 and float(ctrl.video.max()) == 1
    assert cond.shape == (4, 64, 64, 3) and float(cond.min()) == 0 and first.shape == (1, 64, 64, 3)
    assert ctrl.meta["indices"] == [0, 2, 3, 5]
    c2, cond2, prev2 = nd.InterplayDrivingMaskEdit().edit(ctrl, "remove", 0, 0, "0", 1.0, 1)
    assert torch.equal(c2.video[0], ctrl.video[0]) and float(c2.video[1:].max()) == -1
    assert torch.equal(ctrl.video[1, ..., 0] > 0, masks[1] > 0.5)  # original left untouched
    with pytest.raises(ValueError, match="'frames' must be a whole number"):
        nd.InterplayDrivingMaskEdit().edit(ctrl, "time_shift", 0, 0, "x", 1.0, 1)
    with pytest.raises(ValueError, match="connect 'masks', or 'video' \\+ 'sam2'"):
        nd.InterplayDrivingMask().render(4, 64, 64, 0.0, 6.0, 0, "center")
    with pytest.raises(ValueError, match="'prompts' must be"):
        nd._parse_prompts(json.dumps({"frames": {}}))


def test_sampler_node_and_compare(tiny):
    bb, _ = tiny
    (br,) = nd.InterplayInterDynBranchLoader().load(nd.NEW_BRANCH, "auto", backbone=bb)
    ctrl, _, prev, first, _ = nd.InterplayDrivingMask().render(4, 64, 64, 0.0, 6.0, 0, "center", masks=_masks())
    s = sv.InterplayInterDynSampler()
    (a,) = s.sample(bb, first, 3, 2, 4, 1.0, 3.0, 6, 40, 0.02, 1, branch=br, control=ctrl)
    (b,) = s.sample(bb, first, 3, 2, 4, 1.0, 3.0, 6, 40, 0.02, 1)
    assert a.shape == (4, 64, 64, 3) and 0 <= float(a.min()) and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # zero-init branch == bare SVD
    (two,) = s.sample(bb, first, 3, 1, 4, 1.0, 1.0, 6, 40, 0.02, 2)
    assert two.shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="'control' is connected but 'branch' is not"):
        s.sample(bb, first, 3, 1, 4, 1.0, 3.0, 6, 40, 0.02, 1, control=ctrl)
    with pytest.raises(ValueError, match="'control' has 4 frames but num_frames is 5"):
        s.sample(bb, first, 3, 1, 5, 1.0, 3.0, 6, 40, 0.02, 1, branch=br, control=ctrl)
    res = nd.InterplayInterDynCompare().compare(a, 6.0, "interdyn/test", video_b=b, preview_a=prev, preview_b=prev)
    assert res["result"][0].shape == (4, 128, 128, 3)
    info = res["ui"]["images"][0]
    assert (runtime.output_directory() / info["subfolder"] / info["filename"]).is_file()


def test_compare_never_overwrites_an_earlier_file(tmp_path):
    """Numbers go one past the highest existing file, even after an earlier file was deleted."""
    runtime.set_output_directory(tmp_path)
    try:
        v = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
        names = [nd.InterplayInterDynCompare().compare(v, 6.0, "cmp/x")["ui"]["images"][0]["filename"]
                 for _ in range(2)]
        assert names == ["x_00001_.webp", "x_00002_.webp"]
        (tmp_path / "cmp" / "x_00001_.webp").unlink()
        third = nd.InterplayInterDynCompare().compare(v, 6.0, "cmp/x")["ui"]["images"][0]
        assert third == {"filename": "x_00003_.webp", "subfolder": "cmp", "type": "output"}
        with pytest.raises(ValueError, match="InterDyn Compare: filename_prefix: '../out' points outside"):
            nd.InterplayInterDynCompare().compare(v, 6.0, "../out")
    finally:
        runtime.set_output_directory(None)


def test_svd_choices_offer_only_installed_svd_models(tmp_path):
    runtime.set_models_root(tmp_path)
    try:
        assert sv.InterplaySVDLoader.INPUT_TYPES()["required"]["model"][0] == []  # nothing fake to pick
        for name, cls in (("svd_folder", "StableVideoDiffusionPipeline"), ("cog", "CogVideoXImageToVideoPipeline")):
            (tmp_path / "diffusers" / name).mkdir(parents=True)
            (tmp_path / "diffusers" / name / "model_index.json").write_text(json.dumps({"_class_name": cls}))
        (tmp_path / "controlnet" / "interdyn").mkdir(parents=True)
        (tmp_path / "controlnet" / "interdyn" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        (tmp_path / "controlnet" / "other.safetensors").write_bytes(b"")
        assert sv.InterplaySVDLoader.INPUT_TYPES()["required"]["model"][0] == ["diffusers/svd_folder"]
        from interplay.nodes import cogvideox as cn

        assert cn.InterplayCogVideoXLoader.INPUT_TYPES()["required"]["model"][0] == ["diffusers/cog", cn.SINGLE_FILES]
        # a branch folder is listed once, not again as its own weights file
        assert nd.InterplayInterDynBranchLoader.INPUT_TYPES()["required"]["branch"][0] == \
            [nd.NEW_BRANCH, "interdyn", "other.safetensors"]
    finally:
        runtime.set_models_root(None)


def test_branch_loaders_list_only_their_kind(tmp_path):
    """Entries that declare another branch kind (safetensors metadata or a released folder's config class) are
    left out; entries that declare nothing stay in both lists."""
    from safetensors.torch import save_file

    from interplay.nodes import kinemask as cn

    runtime.set_models_root(tmp_path)
    try:
        (tmp_path / "interplay").mkdir()
        (tmp_path / "controlnet" / "sdv").mkdir(parents=True)
        (tmp_path / "controlnet" / "sdv" / "config.json").write_text(json.dumps({"_class_name": "ControlNetSDVModel"}))
        (tmp_path / "controlnet" / "cog").mkdir()
        (tmp_path / "controlnet" / "cog" / "config.json").write_text(json.dumps({"_class_name": "CogVideoXControlnet"}))
        t = {"w": torch.zeros(1)}
        save_file(t, str(tmp_path / "interplay" / "km.safetensors"), metadata={"kind": "kinemask"})
        save_file(t, str(tmp_path / "interplay" / "id.safetensors"), metadata={"interplay_kind": "interdyn"})
        save_file(t, str(tmp_path / "interplay" / "plain.safetensors"))
        assert cn.InterplayKineMaskBranchLoader.INPUT_TYPES()["required"]["branch"][0] == \
            [cn.NEW_BRANCH, "cog", "interplay/km.safetensors", "interplay/plain.safetensors"]
        assert nd.InterplayInterDynBranchLoader.INPUT_TYPES()["required"]["branch"][0] == \
            [nd.NEW_BRANCH, "sdv", "interplay/id.safetensors", "interplay/plain.safetensors"]
    finally:
        runtime.set_models_root(None)
