"""PAM training task on a tiny random CogVideoX (real diffusers classes): the branch learns while the backbone
stays bit-identical, dropout zeroes what the released trainer zeroes, the checkpoint is a branch file."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from interplay.models.backbones import cogvideox as cvx
from interplay.models.control import pam as P, registry
from interplay.models.training import pam as PT
from interplay.models.training import trainer as T
from interplay.models.training.config import _check_options, build_task

F, H, W = 9, 16, 16  # the smallest the tiny VAE and patching take: the CPU VAE dominates a step


@pytest.fixture(scope="module")
def bb():
    return cvx.random_backbone("tiny", seed=0)


def _item(i, slots=("depth", "seg", "hand")):
    g = torch.Generator().manual_seed(i)
    item = {"frames": torch.rand(F, H, W, 3, generator=g), "caption": f"a hand grasps a can {i}"}
    for s in slots:
        item[f"hoi_{s}"] = torch.rand(F, H, W, 3, generator=g)
    return item


class DS(torch.utils.data.Dataset):
    """One clip with a hand-keypoint condition (one condition keeps the CPU VAE work of a step small)."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return _item(i, slots=("hand",))


def _frozen(bb):
    return {f"{n}.{k}": v.clone() for n, m in (("den", bb.denoiser), ("vae", bb.vae), ("te", bb.text_encoder))
            for k, v in m.state_dict().items()}


def test_training_moves_the_branch_and_lowers_the_loss_while_the_backbone_stays(bb, tmp_path):
    before = _frozen(bb)
    task = PT.PAMTask(bb, num_blocks=2, max_text_length=8, conditions="hand", dropout={s: 0.0 for s in P.SLOTS},
                      noised_image_dropout=0.0)
    init = {k: v.clone() for k, v in task.trainable_state_dict().items()}
    batch = T.collate([DS()[0]])

    def fixed_noise_loss():  # the same timesteps and noise before and after
        with torch.no_grad():
            return float(np.mean([task.loss(batch, torch.Generator().manual_seed(s)).item() for s in range(2)]))

    l0 = fixed_noise_loss()
    cfg = T.TrainConfig(steps=8, lr=1e-2, batch_size=1, checkpoint_every=0, seed=0, weight_decay=1e-3)
    res = T.train(task, DS(), cfg, tmp_path)
    l1 = fixed_noise_loss()
    assert all(np.isfinite(res.losses)) and len(res.losses) == 8
    assert l1 < 0.85 * l0, (l0, l1)  # overfits the one clip (0.79x measured)
    after = task.trainable_state_dict()
    for name in ("initial_combine_linear.weight", "combine_linears.0.weight", "combine_linears.1.weight",
                 "transformer_blocks_copy.0.attn1.to_q.weight", "transformer_blocks_copy.1.ff.net.2.weight"):
        assert not torch.equal(after[name], init[name]), name
    now = _frozen(bb)
    assert all(torch.equal(before[k], now[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in bb.denoiser.parameters())
    # the checkpoint is a branch file the branch loader reads back to the same weights
    br = registry.load(tmp_path / T.CHECKPOINT)
    assert br.kind == "pam" and br.config["num_blocks"] == 2
    assert all(torch.equal(br.module.state_dict()[k], v) for k, v in res.state_dict.items())
    with safe_open(str(tmp_path / T.CHECKPOINT), framework="pt") as f:
        assert json.loads(f.metadata()["interplay_training"])["conditions"] == ["hand"]
    out = task.output()
    assert out.kind == "pam" and not any(p.requires_grad for p in out.module.parameters())


def test_zero_init_task_loss_equals_the_loss_without_the_branch(bb):
    task = PT.PAMTask(bb, num_blocks=1, max_text_length=8, conditions="hand")
    b = T.collate([_item(0, slots=("hand",))])
    with torch.no_grad():
        with_branch = task.loss(b, torch.Generator().manual_seed(3))
        task.hp["weight"] = 0.0  # the same draws (conditions still encoded), the branch not run
        without = task.loss(b, torch.Generator().manual_seed(3))
    assert torch.isfinite(with_branch) and torch.equal(with_branch, without)


def test_dropout_zeroes_maps_and_first_frames_as_the_released_trainer(bb):
    task = PT.PAMTask(bb, num_blocks=1, max_text_length=8, conditions="depth,seg",
                      dropout={"depth": 1.0, "seg": 0.0})
    b = T.collate([_item(0, slots=("depth", "seg", "hand")), _item(1, slots=("depth", "seg", "hand"))])
    videos = task.condition_videos(b, b["frames"].shape)
    assert videos["hand"] is None and videos["tracking"] is None  # not trained: always zero
    keep_img = torch.tensor([True, False])
    like = torch.zeros(2, 3, 4, 4, 4)
    lat = task.condition_latents(videos, keep_img, torch.Generator().manual_seed(0), like=like)
    assert lat.shape == (2, 5, 3, 8, 4, 4)
    assert float(lat[:, [0, 1, 2, 4]].abs().max()) == 0  # tracking, normal, depth (dropped), hand (unused)
    # seg kept: its map on both samples; its first frame only where the image was kept (noised-image dropout)
    g = torch.Generator().manual_seed(0)
    for _ in P.SLOTS:
        torch.rand(2, generator=g)  # the task's dropout draws come first
    maps, firsts = P.encode_conditions(bb, {"seg": videos["seg"]}, generator=g)
    assert torch.equal(lat[:, 3, :, :4], maps[:, 3]) and float(maps[:, 3].abs().max()) > 0
    assert torch.equal(lat[0, 3, :, 4:], firsts[0, 3]) and float(lat[1, 3, :, 4:].abs().max()) == 0
    assert float(firsts[0, 3, 1:].abs().max()) == 0  # the first-frame latent is zero-padded to f frames


def test_batch_contract_errors_and_registry_wiring(bb):
    task = PT.PAMTask(bb, num_blocks=1, max_text_length=8)
    b = T.collate([_item(0, slots=())])
    with pytest.raises(ValueError, match="none of the trained conditions .*hoi_depth"):
        task.loss(b, torch.Generator().manual_seed(0))
    bad = T.collate([_item(0)])
    bad["hoi_seg"] = bad["hoi_seg"][:, :5]
    with pytest.raises(ValueError, match=r"'hoi_seg' must be \[B,F,H,W,3\] = \[1, 9, 16, 16, 3\]"):
        task.loss(bad, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'conditions' must name some of"):
        PT.PAMTask(bb, conditions="depth,keypoints")
    spec = registry.get("pam")
    assert spec.task == "pam_branch" and spec.task_class() is PT.PAMTask
    cfg = T.TrainConfig(**spec.train_defaults)
    assert (cfg.betas, cfg.weight_decay, cfg.lr, cfg.schedule, cfg.warmup) == ((0.9, 0.95), 1e-3, 1e-4,
                                                                                 "cosine_restarts", 100)
    _check_options("pam_branch", {"conditions": "depth,hand", "num_blocks": 1}, "test")
    t2 = build_task("pam_branch", bb, {"conditions": "depth,hand", "num_blocks": 1, "max_text_length": 8})
    assert t2.hp["conditions"] == ["depth", "hand"] and t2.branch.module.config.num_blocks == 1
