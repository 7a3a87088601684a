"""KineMask branch / CogVideoX backbone tasks on a tiny random CogVideoX (real diffusers classes).

Built here with models.backbones.cogvideox.random_backbone("tiny") (32 px, 9 frames, 2 blocks) rather than the
kit's folders: the tasks only need a Backbone bundle.
"""
import inspect
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from interplay.models.backbones import cogvideox as cvx
from interplay.models.conditions.velocity import keep_prefix, sample_prefix_length, velocity_video
from interplay.models.control.kinemask import load_branch
from interplay.models.training import kinemask as K
from interplay.models.training import trainer as T

F, H, W = 9, 32, 32


@pytest.fixture(scope="module")
def bb():
    return cvx.random_backbone("tiny", seed=0)


def _item(i):
    g = torch.Generator().manual_seed(i)
    masks = torch.zeros(2, F, H, W)
    for t in range(F):
        masks[0, t, 8:16, 4 + t:12 + t] = 1
        masks[1, t, 20:28, 20:28] = 1
    vel = torch.zeros(2, F, 3)
    vel[0, :, 0] = 0.75  # object 0 moves right at 0.75 m/s (encodes to 0.5)
    driven = torch.tensor([0])
    return {"frames": torch.rand(F, H, W, 3, generator=g), "masks": masks, "vel_control": vel, "driven": driven,
            "control": velocity_video(masks[driven], vel[driven]), "caption": f"a red box moves right {i % 2}"}


class DS(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return _item(i)


def _batch(idx=(0, 1)):
    return T.collate([_item(i) for i in idx])


def test_branch_training_leaves_backbone_bit_identical(bb, tmp_path):
    frozen = {f"{n}.{k}": v.clone() for n, m in (("den", bb.denoiser), ("vae", bb.vae), ("te", bb.text_encoder))
              for k, v in m.state_dict().items()}
    task = K.KineMaskTask(bb, num_layers=1, max_text_length=8)
    cfg = T.TrainConfig(steps=3, lr=1e-3, batch_size=2, checkpoint_every=2, seed=0)
    res = T.train(task, DS(), cfg, tmp_path)
    now = {f"{n}.{k}": v for n, m in (("den", bb.denoiser), ("vae", bb.vae), ("te", bb.text_encoder))
           for k, v in m.state_dict().items()}
    assert all(torch.equal(frozen[k], now[k]) for k in frozen)
    assert all(p.grad is None and not p.requires_grad for p in bb.denoiser.parameters())
    assert all(np.isfinite(res.losses)) and len(res.losses) == 3
    # the checkpoint is a branch file: load_branch reads it back to the same weights
    br = load_branch(tmp_path / T.CHECKPOINT)
    assert br.kind == "kinemask" and br.config["num_layers"] == 1
    sd = br.module.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in res.state_dict.items())
    with safe_open(str(tmp_path / T.CHECKPOINT), framework="pt") as f:
        assert json.loads(f.metadata()["interplay_training"])["stage"] == 1
    out = task.output()
    assert out.kind == "kinemask" and not any(p.requires_grad for p in out.module.parameters())


def test_zero_init_branch_matches_backbone_loss_and_grads_only_reach_out_projs(bb):
    task = K.KineMaskTask(bb, num_layers=1, max_text_length=8)
    base = K.CogVideoXBackboneTask(bb, train=False, max_text_length=8)
    b = _batch()
    with torch.no_grad():
        l0 = base.loss(b, torch.Generator().manual_seed(5))
    loss = task.loss(b, torch.Generator().manual_seed(5))
    # stage 1 draws nothing before the shared I2V draws, so the noise is the same and the branch adds zero
    assert float(loss.detach()) == pytest.approx(float(l0), rel=1e-6)
    loss.backward()
    m = task.branch.module
    outp = {id(p) for p in m.out_projs.parameters()}
    nz = [n for n, p in m.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0]
    assert nz and all(id(dict(m.named_parameters())[n]) in outp for n in nz)


def test_stage2_keeps_an_early_biased_prefix(bb):
    task = K.KineMaskTask(bb, num_layers=1, stage=2, max_text_length=8)
    b = _batch((0, 1))
    g = torch.Generator().manual_seed(11)
    ctrl = task.controls(b, F, g)
    # the same k by hand: numpy generator seeded from the torch stream, one draw per sample
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=torch.Generator().manual_seed(11))))
    ks = [sample_prefix_length(F, rng, "early_biased", 3.0, 0.2) for _ in range(2)]
    for i, k in enumerate(ks):
        assert torch.equal(ctrl[i], keep_prefix(b["control"][i], k))
    # over many draws: k = 1 most often, the mean well below the uniform mean (F+1)/2
    rng = np.random.default_rng(0)
    ks = [sample_prefix_length(F, rng) for _ in range(4000)]
    assert np.mean(ks) < 3.5 and np.bincount(ks).argmax() == 1
    assert torch.equal(K.KineMaskTask(bb, num_layers=1, max_text_length=8).controls(b, F, g), b["control"])


def test_control_reencoded_with_another_v_ref(bb):
    task = K.KineMaskTask(bb, num_layers=1, v_ref=3.0, max_text_length=8)
    b = _batch((0,))
    ctrl = task.controls(b, F, torch.Generator())
    # 0.75 m/s at v_ref 3 encodes to 0.25 on object 0's mask, 0 elsewhere
    on = b["masks"][0][0, 0] > 0.5
    assert float(ctrl[0, 0][on][:, 0].mean()) == pytest.approx(0.25)
    assert float(ctrl[0, 0][~on].abs().max()) == 0.0
    with pytest.raises(ValueError, match="no 'control' video and lacks"):
        task.controls({"frames": b["frames"]}, F, torch.Generator())


def test_named_errors(bb):
    with pytest.raises(ValueError, match="stage must be 1"):
        K.KineMaskTask(bb, stage=3)
    task = K.KineMaskTask(bb, num_layers=1, max_text_length=8)
    with pytest.raises(ValueError, match="num_frames must be one of"):
        task.loss({"frames": torch.rand(1, 8, H, W, 3), "control": torch.zeros(1, 8, H, W, 3)}, torch.Generator())
    with pytest.raises(ValueError, match="'frames' must be \\[B,F,H,W,3\\]"):
        task.loss({"frames": torch.rand(1, F, 3, H, W)}, torch.Generator())


def test_backbone_task_trains_every_weight_and_saves_a_loadable_transformer(tmp_path):
    bb = cvx.random_backbone("tiny", seed=1, with_text_encoder=True)
    task = K.CogVideoXBackboneTask(bb, max_text_length=8, caption=K.DEFAULT_CAPTION)
    assert len(task.trainable_parameters()) == len(list(bb.denoiser.parameters()))
    sd0 = task.trainable_state_dict()
    res = T.train(task, DS(), T.TrainConfig(steps=2, lr=1e-3, batch_size=1, checkpoint_every=0), tmp_path)
    assert any(not torch.equal(sd0[k], res.state_dict[k]) for k in sd0)
    from diffusers import CogVideoXTransformer3DModel

    with safe_open(str(tmp_path / T.CHECKPOINT), framework="pt") as f:
        cfg = json.loads(f.metadata()["config"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    known = inspect.signature(CogVideoXTransformer3DModel.__init__).parameters
    m = CogVideoXTransformer3DModel(**{k: v for k, v in cfg.items() if k in known})
    m.load_state_dict(sd)
    assert all(torch.equal(m.state_dict()[k], res.state_dict[k]) for k in sd)
    with pytest.raises(ValueError, match="trains CogVideoX"):
        from interplay.models.backbones import svd
        K.CogVideoXBackboneTask(svd.random_backbone("tiny"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_branch_on_bf16_backbone(precision, tmp_path):
    bb16 = cvx.random_backbone("tiny", seed=0, dtype=torch.bfloat16)
    task = K.KineMaskTask(bb16, num_layers=1, max_text_length=8)
    assert all(p.dtype == torch.float32 for p in task.trainable_parameters())
    cfg = T.TrainConfig(steps=2, lr=1e-3, batch_size=1, checkpoint_every=0, precision=precision,
                        grad_checkpointing=True)
    res = T.train(task, DS(), cfg, tmp_path)
    assert all(np.isfinite(res.losses)) and all(v.dtype == torch.float32 for v in res.state_dict.values())
    assert bb16.denoiser.gradient_checkpointing and task.branch.module.gradient_checkpointing
    assert all(p.grad is None for p in bb16.denoiser.parameters())
