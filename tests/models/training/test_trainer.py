"""The generic trainer: exact resume after a kill or a cancel, frozen weights untouched, schedules, files."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from interplay.models import runtime
from interplay.models.training import trainer as T


class ToyDataset(torch.utils.data.Dataset):
    """5 items (so batches straddle epochs): x [4], a caption string, per-item masks of varying N."""

    def __init__(self, n=5):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "caption": f"clip {i}", "masks": torch.zeros(i % 2 + 1, 2)}


class ToyTask:
    """A frozen 'backbone' Linear(4,8) and a trainable 'branch' Linear(8,4) with dropout (uses the global
    torch RNG, so exact resume also needs the saved global RNG state)."""

    def __init__(self, interrupt_at=None):
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(4, 8)
        self.branch = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(8, 4))
        self.backbone.requires_grad_(False)
        self.calls = 0
        self.interrupt_at = interrupt_at

    def trainable_parameters(self):
        return list(self.branch.parameters())

    def trainable_state_dict(self):
        return {k: v.detach().clone() for k, v in self.branch.state_dict().items()}

    def load_trainable_state_dict(self, sd):
        self.branch.load_state_dict(sd)

    def config(self):
        return {"task": "toy", "width": 8}

    def train(self):
        self.branch.train()

    def eval(self):
        self.branch.eval()

    def loss(self, batch, generator):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            runtime.request_interrupt()
            runtime.check_interrupt()  # a cancel landing inside a step, mid gradient accumulation
        x = batch["x"]
        noise = torch.randn(x.shape, generator=generator)
        h = self.backbone(x + 0.1 * noise)
        return ((self.branch(h) - x) ** 2).mean()


def cfg(**kw):
    base = dict(steps=8, lr=1e-2, batch_size=3, grad_accum=2, checkpoint_every=3, ema_decay=0.9, seed=7,
                schedule="cosine", warmup=2)
    base.update(kw)
    return T.TrainConfig(**base)


class Kill(Exception):
    pass


def _kill_at(k):
    def on_step(step, loss, lr):
        if step == k:
            raise Kill()
    return on_step


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("INTERPLAY_QUIET", "1")
    runtime.clear_interrupt()
    yield
    runtime.clear_interrupt()


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    ref = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "ref")
    # torch.equal on the final weights: the resumed run is bit-identical, not just close
    with pytest.raises(Kill):
        T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "run", on_step=_kill_at(5))
    state = T.read_state(tmp_path / "run")[1]
    assert state["step"] == 3 and state["cursor"] == 3 * 3 * 2
    res = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "run")
    assert res.resumed_from == 3 and res.steps == 8
    assert _equal(res.state_dict, ref.state_dict)
    assert _equal(res.ema_state_dict, ref.ema_state_dict)
    assert res.losses == ref.losses
    assert not _equal(ref.state_dict, ToyTask().trainable_state_dict())  # it did train
    # the CSV was rewritten from the state on resume: one line per step, no duplicates from the killed run
    lines = (tmp_path / "run" / T.LOSSES).read_text().splitlines()
    assert lines[0] == "step,loss,lr" and [int(l.split(",")[0]) for l in lines[1:]] == list(range(1, 9))
    assert [float(l.split(",")[1]) for l in lines[1:]] == pytest.approx(ref.losses, rel=1e-7)


def test_cancel_saves_then_resume_matches(tmp_path):
    ref = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "ref")

    def cancel(step, loss, lr):
        if step == 4:
            runtime.request_interrupt()  # the progress update after this step raises
    with pytest.raises(runtime.Interrupted):
        T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "run", on_step=cancel)
    assert T.read_state(tmp_path / "run")[1]["step"] == 4
    saved = load_file(str(tmp_path / "run" / T.CHECKPOINT))
    res = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "run")
    assert res.resumed_from == 4 and _equal(res.state_dict, ref.state_dict)
    assert not _equal(saved, ref.state_dict)


def test_cancel_inside_a_step_rolls_back_to_its_start(tmp_path):
    ref = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "ref")
    # loss call 12 = step 6, second micro-batch: steps 1..5 completed
    with pytest.raises(runtime.Interrupted):
        T.train(ToyTask(interrupt_at=12), ToyDataset(), cfg(), tmp_path / "run")
    meta = T.read_state(tmp_path / "run")[1]
    assert meta["step"] == 5 and meta["cursor"] == 5 * 6
    res = T.train(ToyTask(), ToyDataset(), cfg(), tmp_path / "run")
    assert _equal(res.state_dict, ref.state_dict) and res.losses == ref.losses


def test_frozen_backbone_bit_identical_and_gradless(tmp_path):
    task = ToyTask()
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    res = T.train(task, ToyDataset(), cfg(steps=4), tmp_path)
    assert _equal(before, task.backbone.state_dict())
    assert all(p.grad is None and not p.requires_grad for p in task.backbone.parameters())
    assert not _equal(res.state_dict, ToyTask().trainable_state_dict())


def test_checkpoint_files_are_safetensors_and_load(tmp_path):
    task = ToyTask()
    res = T.train(task, ToyDataset(), cfg(steps=3, checkpoint_every=0), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([T.CHECKPOINT, T.EMA_CHECKPOINT, T.STATE, T.LOSSES, T.CURVE])
    ck = load_file(str(tmp_path / T.CHECKPOINT))
    assert _equal(ck, res.state_dict) and set(ck) == {"1.weight", "1.bias"}  # the branch's own key names
    with safe_open(str(tmp_path / T.CHECKPOINT), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == {"task": "toy", "width": 8}
    tensors, meta = T.read_state(tmp_path)
    assert meta["step"] == 3 and meta["final"] is True and len(meta["losses"]) == 3
    assert meta["train_config"]["batch_size"] == 3 and meta["task_config"]["task"] == "toy"
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.0.step", "rng.torch", "ema.0"} <= set(tensors)
    # EMA by hand: 3 steps of ema = 0.9 ema + 0.1 w from the initial weights is not the raw weights
    assert not _equal(res.ema_state_dict, res.state_dict)


def test_ema_matches_hand_recursion(tmp_path):
    seen = []
    task = ToyTask()
    w0 = task.branch[1].weight.detach().clone()
    T.train(task, ToyDataset(), cfg(steps=3, checkpoint_every=0, ema_decay=0.5),
            tmp_path, on_step=lambda s, l, lr: seen.append(task.branch[1].weight.detach().clone()))
    ema = w0
    for w in seen:
        ema = 0.5 * ema + 0.5 * w
    got = load_file(str(tmp_path / T.EMA_CHECKPOINT))["1.weight"]
    torch.testing.assert_close(got, ema, rtol=0, atol=1e-7)


def test_optimizer_state_round_trip_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.8, 0.9))
    p.sum().backward()
    opt.step()
    tensors, meta = T.flatten_optimizer(opt)
    json.dumps(meta)  # JSON-able
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(T.unflatten_optimizer(tensors, meta))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_lr_schedules_hand_values():
    c = T.TrainConfig(steps=12, lr=1.0, warmup=2, schedule="cosine")
    assert T.lr_at(c, 0) == 0.5 and T.lr_at(c, 1) == 1.0
    assert T.lr_at(c, 2) == pytest.approx(1.0) and T.lr_at(c, 7) == pytest.approx(0.5)  # t = 5/10
    c = T.TrainConfig(steps=10, lr=2.0, schedule="linear", min_lr_ratio=0.5)
    assert T.lr_at(c, 5) == pytest.approx(2.0 * (0.5 + 0.5 * 0.5))
    c = T.TrainConfig(steps=10, lr=1.0, schedule="cosine_restarts", restarts=2)
    assert T.lr_at(c, 0) == 1.0 and T.lr_at(c, 5) == pytest.approx(1.0)  # second cycle restarts
    assert T.lr_at(c, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8)))
    assert T.lr_at(T.TrainConfig(steps=5, lr=3e-4), 4) == 3e-4


def test_data_order_is_a_function_of_seed_and_cursor():
    a = T.batch_indices(5, 7, 3, 4)
    assert a == [int(i) for i in torch.cat([T.epoch_order(5, 7, 0)[3:], T.epoch_order(5, 7, 1)[:2]])]
    assert sorted(T.epoch_order(5, 7, 0).tolist()) == [0, 1, 2, 3, 4]
    assert T.batch_indices(5, 7, 3, 4) == a


def test_collate_stacks_equal_shapes_and_lists_the_rest():
    ds = ToyDataset()
    b = T.collate([ds[0], ds[1]])
    assert b["x"].shape == (2, 4) and b["caption"] == ["clip 0", "clip 1"]
    assert isinstance(b["masks"], list) and [m.shape[0] for m in b["masks"]] == [1, 2]


def test_resume_refuses_a_changed_seed_and_named_config_errors(tmp_path):
    T.train(ToyTask(), ToyDataset(), cfg(steps=2), tmp_path)
    with pytest.raises(ValueError, match="seed was 7, now 8"):
        T.train(ToyTask(), ToyDataset(), cfg(steps=4, seed=8), tmp_path)
    res = T.train(ToyTask(), ToyDataset(), cfg(steps=4, seed=8), tmp_path, resume=False)
    assert res.resumed_from == 0
    with pytest.raises(ValueError, match="'precision' must be one of fp32, bf16, fp16"):
        T.TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown key\\(s\\) lrr"):
        T.TrainConfig.from_dict({"lrr": 1})


def test_longer_run_extends_a_finished_one(tmp_path):
    ref = T.train(ToyTask(), ToyDataset(), cfg(steps=6, schedule="constant"), tmp_path / "ref")
    T.train(ToyTask(), ToyDataset(), cfg(steps=3, schedule="constant"), tmp_path / "run")
    res = T.train(ToyTask(), ToyDataset(), cfg(steps=6, schedule="constant"), tmp_path / "run")
    assert res.resumed_from == 3 and _equal(res.state_dict, ref.state_dict)


def test_bf16_autocast_and_grad_accum_equivalence(tmp_path):
    res = T.train(ToyTask(), ToyDataset(), cfg(steps=2, precision="bf16", ema_decay=0), tmp_path / "bf16")
    assert all(np.isfinite(res.losses)) and all(v.dtype == torch.float32 for v in res.state_dict.values())


def test_loss_curve_image():
    img = T.plot_losses([1.0, 0.5, 0.25, 0.2], width=200, height=100)
    assert img.shape == (100, 200, 3) and img.dtype == np.uint8
    assert (img != 255).any(axis=-1).sum() > 200  # frame, lines and labels drawn
    t = T.curve_image([1.0, 0.5])
    assert t.shape == (1, 320, 640, 3) and float(t.max()) <= 1.0


class GroupedTask(ToyTask):
    """The toy branch with its weight and bias in two parameter groups at different learning rates."""

    def param_groups(self):
        lin = self.branch[1]
        return [{"params": [lin.weight], "name": "weight", "lr_scale": 1.0},
                {"params": [lin.bias], "name": "bias", "lr_scale": 0.1}]


def test_param_groups_get_their_own_learning_rates(tmp_path):
    """SGD-free check: Adam's first step moves each parameter by ~lr (sign of the gradient), so the bias (lr_scale
    0.1) moves a tenth as far as the weight; a group listing a parameter twice is refused."""
    cfg = T.TrainConfig(steps=1, lr=1e-2, optimizer="adam", batch_size=2, checkpoint_every=0, clip_norm=0.0)
    task = GroupedTask()
    w0, b0 = task.branch[1].weight.detach().clone(), task.branch[1].bias.detach().clone()
    T.train(task, ToyDataset(), cfg, tmp_path / "a")
    dw = (task.branch[1].weight - w0).abs()
    db = (task.branch[1].bias - b0).abs()
    assert torch.allclose(dw[dw > 0], torch.full_like(dw[dw > 0], 1e-2), rtol=1e-3)
    assert torch.allclose(db[db > 0], torch.full_like(db[db > 0], 1e-3), rtol=1e-3)
    # resuming keeps the groups' own rates (the state holds them)
    cfg2 = T.TrainConfig(steps=2, lr=1e-2, optimizer="adam", batch_size=2, checkpoint_every=0, clip_norm=0.0)
    again = GroupedTask()
    T.train(again, ToyDataset(), cfg2, tmp_path / "a")
    assert again.branch[1].bias.requires_grad

    class Twice(GroupedTask):
        def param_groups(self):
            lin = self.branch[1]
            return [{"params": [lin.weight, lin.bias]}, {"params": [lin.bias], "lr_scale": 0.5}]

    with pytest.raises(ValueError, match="exactly once"):
        T.train(Twice(), ToyDataset(), cfg, tmp_path / "b")
def test_stale_temp_files_of_dead_runs_are_removed(tmp_path):
    """A run killed mid-write leaves ``.<name>.tmp<pid>``; the next run in that folder removes those of processes
    that are gone and keeps those of live ones (a run still writing)."""
    import os
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / f".checkpoint.safetensors.tmp{dead.pid}", out / f".losses.csv.tmp{dead.pid}"]
    live = [out / f".scratch.bin.tmp{os.getpid()}", out / ".scratch.bin.tmp1"]  # this process, and init
    other = [out / ".notes.txt", out / f"x.tmp{dead.pid}"]  # not the trainer's pattern
    for p in stale + live + other:
        p.write_bytes(b"half a file")
    T.train(ToyTask(), ToyDataset(), cfg(), out)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live + other)
    assert (out / T.CHECKPOINT).is_file()
