"""InterDynTask: EDM recipe numbers, frozen backbone, ControlNet gradient property, state round trip."""
import pytest
import torch

from interplay.models.backbones import svd
from interplay.models.training import interdyn as task_mod


@pytest.fixture(scope="module")
def bb():
    return svd.random_backbone("tiny", seed=0)


def _batch(B=2, F=4, H=64, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(B, F, H, W, dtype=torch.bool)
    for t in range(F):
        m[:, t, 16:32, 8 + 8 * t:24 + 8 * t] = True
    return {"frames": torch.rand(B, F, H, W, 3, generator=g), "pusher_mask": m}


def test_sigma_and_drop_statistics():
    g = torch.Generator().manual_seed(0)
    s = task_mod.sample_sigmas(200_000, g)
    assert float(s.log().mean()) == pytest.approx(0.7, abs=0.02)
    assert float(s.log().std()) == pytest.approx(1.6, abs=0.02)
    d = task_mod.drop_mask(200_000, g, 0.05)
    assert float(d.float().mean()) == pytest.approx(0.05, abs=0.003)


def test_loss_grads_only_on_zero_convs_first_step(bb):
    task = task_mod.InterDynTask(bb)
    assert task.config()["lr"] == 1e-5 and task.config()["optimizer"] == "adam"
    assert task.config()["p_mean"] == 0.7 and task.config()["p_drop_image"] == 0.05
    loss = task.loss(_batch(), torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and loss.ndim == 0
    loss.backward()
    m = task.branch.module
    zero_convs = {id(p) for p in list(m.controlnet_down_blocks.parameters()) + list(m.controlnet_mid_block.parameters())}
    nonzero = [n for n, p in m.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0]
    assert nonzero and all(id(dict(m.named_parameters())[n]) in zero_convs for n in nonzero)
    assert float(m.controlnet_cond_embedding.conv_out.weight.grad.abs().max()) == 0.0
    assert all(p.grad is None for p in bb.denoiser.parameters())
    assert not any(p.requires_grad for p in bb.denoiser.parameters())


def test_adam_step_changes_only_branch(bb):
    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    task = task_mod.InterDynTask(bb)
    opt = torch.optim.Adam(task.trainable_parameters(), lr=1e-3)
    sd0 = task.trainable_state_dict()
    for i in range(2):
        opt.zero_grad()
        task.loss(_batch(seed=i), torch.Generator().manual_seed(i)).backward()
        opt.step()
    after = task.trainable_state_dict()
    assert any(not torch.equal(sd0[k], after[k]) for k in sd0)
    assert all(torch.equal(before[k], v) for k, v in bb.denoiser.state_dict().items())
    fresh = task_mod.InterDynTask(bb)
    fresh.load_trainable_state_dict(after)
    assert all(torch.equal(fresh.trainable_state_dict()[k], after[k]) for k in after)


def test_loss_deterministic_and_named_errors(bb):
    task = task_mod.InterDynTask(bb)
    b = _batch()
    with torch.no_grad():
        a1 = task.loss(b, torch.Generator().manual_seed(3))
        a2 = task.loss(b, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    with pytest.raises(ValueError, match="no driver mask"):
        task.loss({"frames": b["frames"]}, torch.Generator())
    with pytest.raises(ValueError, match="'pusher_mask' \\(2, 3, 64, 64\\) must match"):
        task.loss({"frames": b["frames"], "pusher_mask": b["pusher_mask"][:, :3]}, torch.Generator())


def test_bf16_backbone_keeps_fp32_branch():
    bb16 = svd.random_backbone("tiny", seed=0, dtype=torch.bfloat16)
    task = task_mod.InterDynTask(bb16)
    assert all(p.dtype == torch.float32 for p in task.trainable_parameters())
    loss = task.loss(_batch(B=1), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.dtype == torch.float32 for p in task.trainable_parameters())
