"""The GameCraft camera-encoder task on the tiny kit Wan2.2 I2V-A14B: at init it is exactly the backbone's own
flow-matching loss (the zero projection), gradients reach only the encoder (and the LoRA when asked), the
Plücker maps are conditions.camera's, the checkpoint is the encoder file the loader reads (LoRA files beside,
read by apply_lora), a killed run resumes to the uninterrupted weights, and configs find the task."""
import json

import pytest
import torch
from kit import tiny

from interplay.models.backbones import wan
from interplay.models.conditions.camera import Intrinsics, plucker_rays
from interplay.models.control import gamecraft as GC
from interplay.models.sandbox import cli
from interplay.models.sandbox.dataset import SandboxDataset
from interplay.models.training import config as C
from interplay.models.training import trainer as T
from interplay.models.training import wan as WT
from interplay.models.training.gamecraft import GameCraftCameraTask, batch_plucker
from interplay.models.weights import read_header

F, S = 5, 32


@pytest.fixture(scope="module")
def bb():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc_camera")
    cli.make(root, "camera", n=3, size=(S, S), frames=F, seed=3, fps=16.0, progress=False)
    return root


def _batch(data, n=2, bb=None):
    ds = SandboxDataset(data) if bb is None else WT.EncodedDataset(SandboxDataset(data), bb)
    return T.collate([ds[i] for i in range(n)])


def test_at_init_the_loss_is_the_backbones_own(bb, data):
    """The zero-initialised projection adds exactly nothing: the same loss as the frozen backbone's, bit for bit,
    and the batch's cameras really move (so the equality is not a still camera's)."""
    batch = _batch(data, bb=bb)  # encoded once (EncodedDataset): both losses skip the VAE
    assert float((batch["camera_c2w"][:, -1] - torch.eye(4, dtype=torch.float64)).abs().max()) > 1e-3
    task = GameCraftCameraTask(bb, generator=torch.Generator().manual_seed(0))
    base = WT.WanBackboneTask(bb, train=False)
    # the cache holds the posterior mode and the I2V condition the uncached path computes
    fr = batch["frames"][:1]
    assert torch.equal(batch["wan_latents"][:1], wan.encode_video(bb, fr))
    assert torch.equal(batch["wan_image_condition"][:1], wan.i2v_condition(bb, fr[:, 0], F, S, S).condition)
    for seed in (0, 5):
        a = task.loss(batch, torch.Generator().manual_seed(seed))
        b = base.loss(batch, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_gradients_reach_the_encoder_and_lora_only(bb, data):
    batch = _batch(data, bb=bb)
    task = GameCraftCameraTask(bb, lora_rank=2, lr_scale_high_noise=0.5, lr_scale_low_noise=2.0,
                               generator=torch.Generator().manual_seed(0))
    task.loss(batch, torch.Generator().manual_seed(1)).backward()
    assert float(task.encoder.final_proj.weight.grad.abs().sum()) > 0  # the zero projection learns first
    lora = [p for d in task.lora.values() for p in d["params"]]
    assert set(task.lora) == {"high_noise", "low_noise"} and lora
    assert all(not p.requires_grad and p.grad is None for m in wan.expert_modules(bb).values()
               for n, p in m.named_parameters())  # the input bundle's experts stay frozen and untouched
    groups = {g["name"]: g["lr_scale"] for g in task.param_groups()}
    assert groups == {"camera_encoder": 1.0, "lora_high_noise": 0.5, "lora_low_noise": 2.0}
    opt_groups = T.optimizer_groups(task, task.trainable_parameters(), 1e-3)
    assert [g["lr"] for g in opt_groups] == [1e-3, 5e-4, 2e-3]


def test_batch_plucker_is_the_one_plucker_function(data):
    batch = _batch(data)
    pl = batch_plucker(batch["camera_c2w"], batch["camera_intrinsics"], S, S)
    assert pl.shape == (2, F, 6, S, S)
    for i in range(2):
        k = Intrinsics(*batch["camera_intrinsics"][i].tolist())
        assert torch.equal(pl[i], plucker_rays(batch["camera_c2w"][i], k, S, S))
    # translations scaled: the moment (o x d) scales, the direction does not
    big = batch_plucker(batch["camera_c2w"], batch["camera_intrinsics"], S, S, translation_scale=3.0)
    torch.testing.assert_close(big[:, :, :3], 3 * pl[:, :, :3], rtol=1e-5, atol=1e-6)
    assert torch.equal(big[:, :, 3:], pl[:, :, 3:])
    # the sandbox's intrinsics: its K over its size (fov 40 degrees vertical)
    fy = float(batch["camera_intrinsics"][0, 1])
    assert fy == pytest.approx(0.5 / torch.tan(torch.deg2rad(torch.tensor(20.0))).item(), rel=1e-4)


def test_camera_dropout_gives_the_identity_camera(bb, data):
    batch = _batch(data)
    task = GameCraftCameraTask(bb, camera_dropout=0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    drop = torch.rand(2, generator=torch.Generator().manual_seed(4)) < 0.5
    pl = task.plucker(batch, F, S, S, g)
    eye = plucker_rays(torch.eye(4, dtype=torch.float64).expand(F, 4, 4),
                       Intrinsics(*batch["camera_intrinsics"][0].tolist()), S, S)
    for i in range(2):
        assert torch.equal(pl[i], eye) == bool(drop[i])
    with pytest.raises(ValueError, match="camera_c2w"):
        task.plucker({"frames": batch["frames"]}, F, S, S)


def test_train_checkpoint_loads_and_resume_is_exact(bb, data, tmp_path):
    ds = WT.EncodedDataset(SandboxDataset(data), bb)
    cfg = dict(lr=3e-3, batch_size=2, checkpoint_every=2, seed=7)

    def task():
        return C.build_task("gamecraft_camera", bb, {"lora_rank": 2}, seed=7)

    t1 = task()
    r1 = T.train(t1, ds, T.TrainConfig(steps=3, **cfg), tmp_path / "a")
    assert all(torch.isfinite(torch.tensor(r1.losses)))
    T.train(task(), ds, T.TrainConfig(steps=2, **cfg), tmp_path / "b")
    t2 = task()
    T.train(t2, ds, T.TrainConfig(steps=3, **cfg), tmp_path / "b")  # resumes at step 2
    a, b = t1.trainable_state_dict(), t2.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["final_proj.weight"].abs().sum()) > 0
    enc = GC.load_encoder(tmp_path / "a" / T.CHECKPOINT)
    assert all(torch.equal(v, a[k]) for k, v in enc.module.state_dict().items())
    meta = read_header(tmp_path / "a" / T.CHECKPOINT)[1]
    assert meta["kind"] == GC.KIND and json.loads(meta["interplay_training"])["lora_rank"] == 2
    from interplay.models.training.lora import apply_lora

    hi = apply_lora(bb, tmp_path / "a" / "checkpoint_lora_high_noise.safetensors")
    lo_sd = {k: v for k, v in a.items() if k.startswith("lora.low_noise.")}
    assert lo_sd and (tmp_path / "a" / "checkpoint_lora_low_noise.safetensors").exists()
    # the LoRA file applied to the high-noise expert computes what the task's own LoRA did
    x = torch.randn(1, 36, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([950.0])
    with torch.no_grad():
        torch.testing.assert_close(hi.denoiser(x, t, emb, return_dict=False)[0],
                                   t1.lora["high_noise"]["module"](x, t, emb, return_dict=False)[0])


def test_config_finds_the_task_and_the_wan_loader(data, tmp_path):
    assert "gamecraft_camera" in C.branch_tasks() and "wan_backbone" in C.tasks()
    assert C.task_family("gamecraft_camera") == "wan" and C.task_family("wan_backbone") == "wan"
    rc = C.parse_config({"task": "gamecraft_camera", "out_dir": str(tmp_path / "run"),
                         "backbone": {"random": "tiny", "dtype": "fp32", "device": "cpu"},
                         "dataset": {"root": str(data)},
                         "options": {"camera_dropout": 0.1, "lora_rank": 1},
                         "train": {"steps": 1, "batch_size": 1}})
    res, task = C.run(rc)
    assert isinstance(task, GameCraftCameraTask) and task.bb.family == "wan"
    assert len(res.losses) == 1 and torch.isfinite(torch.tensor(res.losses[0]))
    with pytest.raises(ValueError, match="unknown option"):
        C.parse_config({"task": "gamecraft_camera", "out_dir": "x", "backbone": {"random": "tiny"},
                        "dataset": {"root": str(data)}, "options": {"stage": 2}})


def test_bad_arguments_are_named(bb):
    with pytest.raises(ValueError, match="camera_dropout"):
        GameCraftCameraTask(bb, camera_dropout=1.0)
    with pytest.raises(ValueError, match="lora_experts"):
        GameCraftCameraTask(bb, lora_rank=1, lora_experts="middle")
    with pytest.raises(ValueError, match="lr_scale_low_noise"):
        GameCraftCameraTask(bb, lr_scale_low_noise=0)


def test_train_experts_fine_tunes_both_with_their_own_rates(data, tmp_path):
    own = wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")  # trained in place
    before = {k: v.clone() for k, v in own.experts["low_noise"].state_dict().items()}
    task = GameCraftCameraTask(own, train_experts=True, lr_scale_low_noise=0.5,
                               generator=torch.Generator().manual_seed(0))
    groups = {g["name"]: g["lr_scale"] for g in task.param_groups()}
    assert groups == {"camera_encoder": 1.0, "high_noise": 1.0, "low_noise": 0.5}
    T.train(task, WT.EncodedDataset(SandboxDataset(data), own),
            T.TrainConfig(steps=2, lr=1e-3, batch_size=2, seed=1), tmp_path)
    after = own.experts["low_noise"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint_low_noise.safetensors"))
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    enc = GC.load_encoder(tmp_path / T.CHECKPOINT)  # the encoder file holds only the encoder
    assert set(enc.module.state_dict()) == {k for k in task.trainable_state_dict() if not k.startswith("expert.")}
    with pytest.raises(ValueError, match="train_experts"):
        GameCraftCameraTask(own, train_experts=True, lora_rank=2)
