"""PAM motion-branch nodes: the branch loader finds the released folder by name in diffusers/ and controlnet/
(and says what it found), refuses DiffusionAsShader by name; PAM Control's errors; the unchanged CogVideoX
Sampler node runs the PAM branch through 'branch' + 'control' and through an Apply Control chain."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cog
from interplay.models.control import pam as P
from interplay.nodes import pam as nd
from interplay.nodes.cogvideox import InterplayCogVideoXSampler
from interplay.nodes.controls import InterplayApplyControl
from kit import tiny

F, H, W = 9, 32, 32


@pytest.fixture(scope="module")
def root(tiny_cogvideox, tmp_path_factory):
    released = tiny.tiny_pam_released_dir()
    r = tmp_path_factory.mktemp("models")
    for kind in ("diffusers", "controlnet", "interplay"):
        (r / kind).mkdir()
    # hard-linked copies: the path rule refuses symlinks that lead out of the models folders
    tiny._link_or_copy(tiny_cogvideox, r / "diffusers" / "tiny_cogvideox")
    tiny._link_or_copy(released, r / "diffusers" / "PAM-tiny")
    tiny._link_or_copy(released, r / "controlnet" / "pam_dexycb_all_cond")
    das = r / "controlnet" / "das_tracking"  # DiffusionAsShader: the same class name, a [D, D] projection
    das.mkdir()
    sd = {}
    for f in sorted(released.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    sd["initial_combine_linear.weight"] = torch.zeros(32, 32)
    save_file(sd, str(das / "diffusion_pytorch_model.safetensors"))
    (das / "config.json").write_text((released / "config.json").read_text())
    return r


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _conditions(frames=F, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.rand(frames, H, W, 3, generator=g) for s in ("depth", "seg", "hand")}


def test_branch_loader_lists_and_loads_the_released_folder_by_name(root, bb):
    runtime.set_models_root(root)
    choices = nd.InterplayPAMBranchLoader.INPUT_TYPES()["required"]["branch"][0]
    assert choices[0] == nd.PAM_NEW_BRANCH
    assert "diffusers/PAM-tiny" in choices and "pam_dexycb_all_cond" in choices
    assert "diffusers/tiny_cogvideox" not in choices  # a plain pipeline is the backbone, not a branch
    node = nd.InterplayPAMBranchLoader()
    want = tiny.new_pam_released_state(0)[0]
    for name in ("diffusers/PAM-tiny", "pam_dexycb_all_cond"):
        out = node.load(name, 12, backbone=bb)
        br, text = out["result"]
        assert out["ui"]["text"] == [text]
        assert text.startswith("released PAM transformer (CogVideoXTransformer3DModelTracking): 2 copied blocks of 2")
        assert "block count read from the weights" in text and br.config["num_blocks"] == 2  # not the widget's 12
        assert all(torch.equal(v, want[k]) for k, v in br.module.state_dict().items())
    with pytest.raises(ValueError, match=r"PAM Branch Loader: das_tracking is a DiffusionAsShader transformer.*"
                                         r"not supported.*'branch' = 'das_tracking'"):
        node.load("das_tracking", 12, backbone=bb)


def test_branch_loader_new_and_pack_file(root, bb, tmp_path):
    runtime.set_models_root(root)
    node = nd.InterplayPAMBranchLoader()
    with pytest.raises(ValueError, match="connect 'backbone'"):
        node.load(nd.PAM_NEW_BRANCH, 2)
    with pytest.raises(ValueError, match="'num_blocks' 3 exceeds the backbone's 2 blocks"):
        node.load(nd.PAM_NEW_BRANCH, 3, backbone=bb)
    br, text = node.load(nd.PAM_NEW_BRANCH, 1, backbone=bb)["result"]
    assert br.config["num_blocks"] == 1 and "zero-initialised" in text
    P.save_branch(br, root / "interplay" / "pam_run" / "checkpoint.safetensors")
    assert "interplay/pam_run/checkpoint.safetensors" in nd.InterplayPAMBranchLoader.INPUT_TYPES()["required"][
        "branch"][0]
    again, text = node.load("interplay/pam_run/checkpoint.safetensors", 12, backbone=bb)["result"]
    assert text.startswith("PAM branch file (1 copied blocks)") and again.config["num_blocks"] == 1


def test_pam_control_builds_the_signal_and_names_its_errors():
    node = nd.InterplayPAMControl()
    c = _conditions()
    (sig,) = node.build(0.9, 0.0, 1.0, F, depth=c["depth"], seg=c["seg"], hand=c["hand"])
    assert sig.kind == "hoi" and sig.video.shape == (F, H, W, 15) and sig.weight == 0.9
    assert sig.meta["enabled"] == [False, False, True, True, True]
    with pytest.raises(ValueError, match="PAM Control: no condition is connected"):
        node.build(1.0, 0.0, 1.0, F)
    with pytest.raises(ValueError, match="the conditions have 17 frames but 'num_frames' is 9"):
        node.build(1.0, 0.0, 1.0, F, depth=_conditions(17)["depth"])
    with pytest.raises(ValueError, match="PAM Control: 'seg' is 17 frames of 32x32 but 'depth' is 9 frames"):
        node.build(1.0, 0.0, 1.0, 0, depth=c["depth"], seg=_conditions(17)["seg"])
    with pytest.raises(ValueError, match=r"'hand' must be an IMAGE batch \[F,H,W,3\]"):
        node.build(1.0, 0.0, 1.0, F, hand=torch.rand(F, H, W))
    (any_len,) = node.build(1.0, 0.0, 1.0, 0, depth=_conditions(17)["depth"])
    assert any_len.video.shape[0] == 17


def test_the_unchanged_sampler_node_runs_pam(root, bb):
    runtime.set_models_root(root)
    br = nd.InterplayPAMBranchLoader().load("pam_dexycb_all_cond", 12, backbone=bb)["result"][0]
    c = _conditions()
    (sig,) = nd.InterplayPAMControl().build(1.0, 0.0, 1.0, F, **c)
    img = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(5))
    kw = dict(prompt="A man is in a lab trying to grasp something.", negative=P.NEGATIVE_PROMPT, width=W, height=H,
              num_frames=F, steps=2, cfg=6.0, dynamic_cfg=True, scheduler="dpm", seed=42, decode=False)
    sampler = InterplayCogVideoXSampler()
    plain = sampler.sample(bb, img, **kw)[1]["samples"]
    got = sampler.sample(bb, img, **kw, control=sig, branch=br, control_weight=1.0)[1]["samples"]
    assert (got - plain).abs().max() > 1e-3
    chain = InterplayApplyControl().apply(br, 1.0, 0.0, 1.0, control=sig)[0]
    assert torch.equal(sampler.sample(bb, img, **kw, controls=chain, control_weight=1.0)[1]["samples"], got)
    with pytest.raises(ValueError, match="'control' has 17 frames but num_frames is 9"):
        (long,) = nd.InterplayPAMControl().build(1.0, 0.0, 1.0, 0, **_conditions(17))
        sampler.sample(bb, img, **kw, control=long, branch=br)


def test_descriptions_carry_the_release_sampler_settings():
    for cls in (nd.InterplayPAMBranchLoader, nd.InterplayPAMControl):
        d = cls.DESCRIPTION
        assert "dpm" in d and "steps 50" in d and "cfg 6" in d and "dynamic_cfg on" in d and P.NEGATIVE_PROMPT in d
    assert json.dumps(P.SAMPLER_SETTINGS)  # JSON-able for workflows
