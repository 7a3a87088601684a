"""Self-Forcing student fine-tuning on the tiny kit Wan2.2 I2V-A14B (two experts): the DMD loss's gradient is the
hand-computed normalised score difference; the training rollout is the causal sampler's own (exiting at the last
step gives its blocks bitwise) with gradients only at the exit step, on the expert that step runs; a critic equal to
a guidance-free teacher gives the student exactly no gradient; one small student update moves its video towards
the teacher's x0 and away from the critic's; a killed run resumes to the uninterrupted weights with the same
generator/critic alternation; the checkpoint is the student's transformers with causal metadata; configs and the
node find the task."""
import json

import pytest
import torch
from kit import tiny
from safetensors.torch import load_file

from interplay.models import runtime
from interplay.models.backbones import wan
from interplay.models.sampling import causal as CS
from interplay.models.sandbox import cli
from interplay.models.sandbox.dataset import SandboxDataset
from interplay.models.training import config as C
from interplay.models.training import trainer as T
from interplay.models.training.self_forcing import SelfForcingTask, dmd_loss
from interplay.models.weights import read_header

F, S = 9, 32  # 9 frames -> 3 latent frames: three blocks of one latent frame


@pytest.fixture(scope="module")
def bb():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf_camera")
    cli.make(root, "camera", n=2, size=(S, S), frames=F, seed=3, fps=16.0, progress=False)
    return root


def _task(bb, **kw):
    return SelfForcingTask(bb, **{"block_latent_frames": 1, "window_latent_frames": 2, **kw})


def _image():
    return torch.rand(1, S, S, 3, generator=torch.Generator().manual_seed(5))


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 2, 2, generator=g, requires_grad=True)
    real, fake = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 2, 2, 2, generator=g)
    loss = dmd_loss(x, real, fake)
    loss.backward()
    norm = (x.detach() - real).abs().flatten(1).mean(1).view(2, 1, 1, 1, 1)
    want = (fake - real) / norm
    torch.testing.assert_close(x.grad, want / x.numel(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss, 0.5 * (want.double() ** 2).mean(), rtol=1e-6, atol=0)
    # descent moves x towards the teacher's x0 where the critic's is elsewhere
    assert float(((-x.grad) * (real - fake)).sum()) > 0
    x2 = x.detach().clone().requires_grad_(True)
    same = dmd_loss(x2, real, real)
    same.backward()
    assert float(same.detach()) == 0.0 and torch.count_nonzero(x2.grad) == 0


def test_exit_at_the_last_step_is_the_samplers_block_with_gradients_only_at_the_exit(bb):
    cfg = CS.CausalConfig(block_latent_frames=1, window_latent_frames=2)
    plain = CS.CausalRollout(bb, cfg, height=S, width=S, image=_image(), seed=11)
    ref = plain.generate(3, prompts=["a box"] * 3)
    task = _task(bb)
    out = task.rollout(_image(), "a box", 3, 11, len(cfg.timesteps) - 1, S, S)
    assert torch.equal(out.detach(), ref)
    # default steps [1000, 937.5, 833.3, 625], boundary 900: steps 0-1 high-noise, 2-3 low-noise
    experts = wan.expert_modules(task.student)
    for exit_step, trained in ((1, "high_noise"), (3, "low_noise")):
        for m in experts.values():
            m.zero_grad(set_to_none=True)
        x = task.rollout(_image(), "a box", 3, 11, exit_step, S, S)
        assert x.requires_grad
        x.square().mean().backward()
        other = "low_noise" if trained == "high_noise" else "high_noise"
        assert any(g is not None and torch.count_nonzero(g) for g in _grads(experts[trained]))
        assert all(g is None for g in _grads(experts[other]))
    assert all(p.grad is None for m in wan.expert_modules(bb).values() for p in m.parameters())  # teacher frozen
    with pytest.raises(ValueError, match="exit_step must be a step index in 0..3"):
        plain.generate_block(exit_step=4)


def test_a_critic_equal_to_a_guidance_free_teacher_gives_no_student_gradient(bb):
    task = _task(bb, teacher_cfg=1.0)
    task.set_step(0)
    assert task.generator_step()
    loss = task.loss({"frames": torch.rand(1, F, S, S, 3, generator=torch.Generator().manual_seed(1)),
                      "caption": ["a box"]}, torch.Generator().manual_seed(3))
    loss.backward()
    assert task.last["generator_step"] and task.last["dmd"] == [0.0]
    student = [p.grad for m in wan.expert_modules(task.student).values() for p in m.parameters()]
    assert any(g is not None for g in student) and all(g is None or torch.count_nonzero(g) == 0 for g in student)
    critic = [p.grad for m in wan.expert_modules(task.critic).values() for p in m.parameters() if p.grad is not None]
    assert critic and any(torch.count_nonzero(g) for g in critic)
    # a critic-only step (step 1 of ratio 5) leaves the student's weights out of the graph
    task.set_step(1)
    assert not task.generator_step()


def test_one_small_student_update_moves_its_video_towards_the_teacher(bb):
    student = wan.load_wan(tiny.tiny_wan_dir(seed=1, variant="2.2"), dtype="fp32", device="cpu")
    task = _task(bb, teacher_cfg=3.0, student=student)
    image, cap, seed, exit_step = _image(), "a box", 21, 3
    x = task.rollout(image, cap, 3, seed, exit_step, S, S)
    conds = task._teacher_conds(image, cap, F, S, S)
    t = 500.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x_t = 0.5 * x.detach() + 0.5 * noise
        real = task._x0(bb, x_t, t, conds, task.teacher_guidance)
        fake = task._x0(task.critic, x_t, t, conds, task.plain)
    dmd_loss(x, real, fake).backward()
    params = [p for m in wan.expert_modules(task.student).values() for p in m.parameters() if p.grad is not None]
    with torch.no_grad():
        for p in params:
            p -= 1e-1 * p.grad
    x2 = task.rollout(image, cap, 3, seed, exit_step, S, S, grad=False)
    step = (x2 - x.detach()).double()
    assert float(step.abs().max()) > 0
    cos = float((step * (real - fake).double()).sum() / (step.norm() * (real - fake).double().norm()))
    assert cos > 0.5, cos  # first order: the update follows the DMD direction


def test_train_resumes_exactly_and_saves_the_causal_student(bb, data, tmp_path):
    ds = SandboxDataset(data)
    cfg = dict(lr=1e-4, batch_size=1, checkpoint_every=2, seed=7)
    teacher = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}

    def task():
        return C.build_task("self_forcing", bb, {"block_latent_frames": 1, "window_latent_frames": 2,
                                                 "critic_ratio": 2}, seed=7)

    t1 = task()
    r1 = T.train(t1, ds, T.TrainConfig(steps=3, **cfg), tmp_path / "a")
    assert all(torch.isfinite(torch.tensor(r1.losses)))
    T.train(task(), ds, T.TrainConfig(steps=2, **cfg), tmp_path / "b")
    t2 = task()
    T.train(t2, ds, T.TrainConfig(steps=3, **cfg), tmp_path / "b")  # resumes at step 2, a generator step
    a, b = t1.trainable_state_dict(), t2.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in a} == {
        "student.high_noise", "student.low_noise", "critic.high_noise", "critic.low_noise"}
    assert all(torch.equal(v, bb.denoiser.state_dict()[k]) for k, v in teacher.items())  # teacher untouched
    moved = [k for k in a if k.startswith("student.") and not torch.equal(
        a[k], wan.expert_modules(bb)[k.split(".")[1]].state_dict()[k.split(".", 2)[2]])]
    assert moved
    groups = {g["name"]: g["lr_scale"] for g in t1.param_groups()}
    assert groups == {"student.high_noise": 1.0, "student.low_noise": 1.0, "critic.high_noise": 0.2,
                      "critic.low_noise": 0.2}
    hi, lo = tmp_path / "a" / T.CHECKPOINT, tmp_path / "a" / "checkpoint_low_noise.safetensors"
    for path, name in ((hi, "high_noise"), (lo, "low_noise")):
        saved, meta = load_file(str(path)), read_header(path)[1]
        mine = wan.expert_modules(t1.student)[name].state_dict()
        assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in saved)
        info = json.loads(meta["interplay_causal"])
        assert info["source"] == "interplay_self_forcing" and info["expert"] == name
        assert info["block_latent_frames"] == 1
        from diffusers import WanTransformer3DModel

        m = WanTransformer3DModel.from_config(json.loads(meta["config"]))
        m.load_state_dict(saved, strict=True)  # the file is a whole transformer of its config
    from interplay.models.backbones.wan_causal import causal_info

    assert causal_info(t1.student.replace(source={"transformer": str(hi)}))["source"] == "interplay_self_forcing"


def test_config_finds_the_task_and_names_bad_options(data, tmp_path):
    assert "self_forcing" in C.tasks() and C.task_family("self_forcing") == "wan"
    rc = C.parse_config({"task": "self_forcing", "out_dir": str(tmp_path / "run"),
                         "backbone": {"random": "tiny", "dtype": "fp32", "device": "cpu"},
                         "dataset": {"root": str(data)},
                         "options": {"block_latent_frames": 1, "window_latent_frames": 2},
                         "train": {"steps": 1, "batch_size": 1}})
    res, task = C.run(rc)
    assert isinstance(task, SelfForcingTask) and len(res.losses) == 1
    for bad in ({"student": "/etc/passwd"}, {"stage": 4}):
        with pytest.raises(ValueError, match="unknown option"):
            C.parse_config({"task": "self_forcing", "out_dir": "x", "backbone": {"random": "tiny"},
                            "dataset": {"root": str(data)}, "options": bad})


def test_bad_arguments_and_clip_lengths_are_named(bb):
    with pytest.raises(ValueError, match="critic_ratio"):
        _task(bb, critic_ratio=0)
    with pytest.raises(ValueError, match="teacher_cfg"):
        _task(bb, teacher_cfg=0.5)
    with pytest.raises(ValueError, match="min_timestep"):
        _task(bb, min_timestep=900, max_timestep=100)
    with pytest.raises(ValueError, match="critic_lr_scale"):
        _task(bb, critic_lr_scale=0)
    task = SelfForcingTask(bb)  # blocks of 3 latent frames: 9 frames give 3, 5 frames give 2
    with pytest.raises(ValueError, match="not whole blocks of 3"):
        task.loss({"frames": torch.rand(1, 5, S, S, 3), "caption": ["a"]}, torch.Generator().manual_seed(0))
    ti2v = wan.load_wan(tiny.tiny_wan_dir(variant="2.2-ti2v"), dtype="fp32", device="cpu")
    with pytest.raises(ValueError, match="text-image-to-video"):
        SelfForcingTask(ti2v)
    with pytest.raises(ValueError, match="Wan"):
        from interplay.models.backbones import cogvideox as cvx

        SelfForcingTask(cvx.random_backbone("tiny", seed=0))


def test_node_trains_the_student_for_the_causal_sampler(bb, data, tmp_path):
    from kit.tiny import _link_or_copy

    from interplay.nodes import gamecraft_play as N

    runtime.set_models_root(tmp_path / "models")
    _link_or_copy(data, runtime.input_directory() / "sfclips")
    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    extra = json.dumps({"v": 1, "options": {"block_latent_frames": 1, "window_latent_frames": 2}})
    out = N.InterplayTrainCausalStudent().train(bb, "sfclips", "sf/s1", 9, 2, 1e-4, 1, 1, "fp32", 0, 1, True, 2,
                                                3.0, extra=extra)
    student, curve, path = out["result"]
    assert path == str(tmp_path / "models" / "interplay" / "sf" / "s1" / T.CHECKPOINT)
    assert curve.shape == (1, 320, 640, 3) and "2 steps (resumed from 0)" in out["ui"]["text"][0]
    assert student.denoiser is not bb.denoiser and not student.denoiser.training
    assert not any(p.requires_grad for p in student.denoiser.parameters())
    assert all(torch.equal(v, bb.denoiser.state_dict()[k]) for k, v in before.items())
    from interplay.models.backbones.wan_causal import causal_info

    assert causal_info(student)["source"] == "interplay_self_forcing"
    mode, why = N._resolve_mode("X", "auto", student, None)
    assert mode == "causal", why
    with pytest.raises(ValueError, match="unknown option"):
        N.InterplayTrainCausalStudent().train(bb, "sfclips", "sf/s2", 9, 1, 1e-4, 1, 1, "fp32", 0, 1, True, 2, 3.0,
                                              extra=json.dumps({"v": 1, "options": {"stage": 4}}))
