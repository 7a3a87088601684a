"""The demo recipe end to end at toy size: every stage runs through the pack's trainer, the export loads
through the user-facing loaders, the frozen backbone is untouched by branch training, and the evaluation set
is in the format `interplay eval` reads."""
import json
from pathlib import Path

import torch

from interplay.models.demo import build as B
from interplay.models.demo import configs as C


def test_build_quick_end_to_end(tmp_path):
    argv = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--threads", "1", "--eval", "1"]
    for kv in ("n_train=8", "vae_steps=2", "backbone_steps=2", "branch_stage1_steps=2", "branch_stage2_steps=2",
               "sample_steps=2", "backbone_batch=2", "branch_batch=2", "vae_batch=2", "branch_layers=2"):
        argv += ["--set", kv]
    assert B.main(argv) == 0
    info = json.loads((tmp_path / "out" / "demo_config.json").read_text())
    assert info["config"]["n_train"] == 8 and info["config"]["frames"] == 9
    assert set(info["timings_s"]) == {"scenes", "vae", "latents", "backbone", "branch"}
    bb, br = B.load_demo(tmp_path / "out")
    assert bb.family == "cogvideox" and bb.extra["vae_scale_factor_spatial"] == 4
    assert abs(bb.extra["scaling_factor"] - info["vae_scaling_factor"]) < 1e-3  # stored in fp16 config as float
    assert br.module.config.downscale_coef == 4 and br.module.config.num_layers == 2
    assert next(br.module.parameters()).dtype == torch.float32  # fp16 on disk, compute dtype in memory
    ev = tmp_path / "work" / "eval"
    assert (ev / "control" / "clip_1000000.mp4").is_file() and (ev / "zero" / "clip_1000000.mp4").is_file()
    from interplay.models.sandbox.evaluate import evaluate_folder

    rep = evaluate_folder(ev / "control", ev / "reference")
    assert len(rep["clips"]) == 1


def test_latent_dataset_control_is_the_velocity_encoding():
    cfg = C.DemoConfig(n_train=2)
    clips = B.make_scenes(cfg, [0, 1])
    lat = {k: torch.zeros(2, 3, 8, 16, 16) for k in ("lat_mean", "lat_std")}
    lat.update({k: torch.zeros(2, 1, 8, 16, 16) for k in ("img_mean", "img_std")})
    item = B.LatentClips(lat, clips)[1]
    assert torch.equal(item["control"], B.clip_control(clips[1]))
    d = clips[1].driven[0]
    on = torch.from_numpy(clips[1].masks[d, 0])
    v = clips[1].vel_control[d, 0]
    assert torch.allclose(item["control"][0][on][:, :2].mean(0), torch.tensor(v[:2]).float().clamp(-1.5, 1.5) / 1.5,
                          atol=1e-6)


def test_eval_modes_give_the_documented_controls():
    clip = B.make_scenes(C.DemoConfig(), [1_000_000])[0]
    full = B.clip_control(clip)
    assert full[1:].abs().sum() > 0  # the object moves: later frames carry velocity
    ctrl = B.eval_control(clip, "control")
    assert torch.equal(ctrl[0], full[0]) and ctrl[1:].abs().sum() == 0  # the inference condition
    assert torch.equal(B.eval_control(clip, "trajectory"), full)
    assert B.eval_control(clip, "zero").abs().sum() == 0
    try:
        B.eval_control(clip, "oracle")
    except ValueError as e:
        assert "control, zero, trajectory" in str(e)
    else:
        raise AssertionError("an unknown mode must be refused")


def test_eval_only_evaluates_an_existing_model_with_its_stored_config(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--work", str(tmp_path / "work"), "--threads", "1", "--eval", "0"]
    for kv in ("n_train=4", "vae_steps=1", "backbone_steps=1", "branch_stage1_steps=1", "branch_stage2_steps=1",
               "backbone_batch=2", "branch_batch=2", "vae_batch=2", "branch_layers=1", "sample_steps=2"):
        argv += ["--set", kv]
    assert B.main(argv) == 0 and not (tmp_path / "work" / "eval").exists()
    ev = tmp_path / "ev"
    from interplay.models.sampling import cogvideox as S

    steps, real = [], S.sample_cogvideox
    monkeypatch.setattr(S, "sample_cogvideox", lambda *a, **k: steps.append(k["steps"]) or real(*a, **k))
    assert B.main(["--eval-only", "--out", str(out), "--work", str(ev), "--eval", "1", "--threads", "1",
                   "--eval-modes", "control,trajectory,truth"]) == 0
    assert sorted(p.name for p in (ev / "eval").iterdir()) == ["control", "reference", "trajectory", "truth"]
    from interplay.models.video_io import load_video

    a = load_video(ev / "eval" / "control" / "clip_1000000.mp4")[0]
    b = load_video(ev / "eval" / "trajectory" / "clip_1000000.mp4")[0]
    assert a.shape == b.shape == (9, 64, 64, 3)
    assert steps == [2, 2]  # the model's stored config (sample_steps=2), not the defaults (25); truth samples nothing
    from interplay.models.sandbox.dataset import read_clip

    truth = load_video(ev / "eval" / "truth" / "clip_1000000.mp4")[0]
    ref = torch.from_numpy(read_clip(ev / "eval" / "reference" / "clip_1000000").frames).float() / 255.0
    assert truth.shape == ref.shape and float((truth - ref).abs().mean()) < 0.03  # the same video, h264-coded
    printed = capsys.readouterr().out
    cmds = [line.strip() for line in printed.split("evaluate with:\n", 1)[1].splitlines() if " eval " in line]
    assert len(cmds) == 3
    # runnable as printed, with the README table's flags
    import re
    import shlex
    import subprocess
    import sys

    readme = (Path(B.__file__).resolve().parents[2] / "README.md").read_text()
    table_cmd = re.search(r"interplay eval\s+WORK/eval/control\s+WORK/eval/reference\s+([^`]*)`", readme).group(1)
    assert tuple(shlex.split(table_cmd)) == B.EVAL_FLAGS
    argv = shlex.split(cmds[0])
    assert argv[argv.index("eval") + 1:argv.index("eval") + 5] == [str(ev / "eval" / "control"),
                                                                  str(ev / "eval" / "reference"), *B.EVAL_FLAGS]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((ev / "eval" / "control.json").read_text())
    assert report["summary"]["iou"]["n"] == 1
    # a folder without a model: a clear error naming what is missing, exit code 2
    assert B.main(["--eval-only", "--out", str(tmp_path / "none"), "--work", str(ev), "--eval", "1"]) == 2
    assert "the demo model is missing" in capsys.readouterr().out


def test_eval_flags_are_checked(tmp_path):
    import pytest

    for argv in (["--eval-modes", "control,oracle"], ["--eval-only", "--eval", "0"], ["--eval-modes", ","]):
        with pytest.raises(SystemExit) as e:
            B.main(argv + ["--work", str(tmp_path / "w")])
        assert e.value.code == 2


def test_device_choice(tmp_path, monkeypatch, capsys):
    import pytest

    monkeypatch.delenv("INTERPLAY_DEVICE", raising=False)  # auto = runtime.compute_device(), which honours it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert B.resolve_device("auto").type == "cpu" and B.resolve_device("cpu").type == "cpu"
    with pytest.raises(SystemExit) as e:  # asking for a GPU that is not there: a clear refusal, nothing trained
        B.main(["--device", "cuda", "--work", str(tmp_path / "w")])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert B.resolve_device("auto").type == "cuda"
    # training autocasts in runtime.default_dtype: bf16 on a GPU with bf16, fp16 on an older GPU, fp32 on the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert B._train_cfg(10, 2, 1e-4, 0, device=torch.device("cuda")).precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert B._train_cfg(10, 2, 1e-4, 0, device=torch.device("cuda")).precision == "fp16"
    assert B._train_cfg(10, 2, 1e-4, 0, device=torch.device("cpu")).precision == "fp32"
    assert B._train_cfg(10, 2, 1e-4, 0).precision == "fp32"


def test_eval_only_refuses_a_corrupt_stored_config(tmp_path, capsys):
    import pytest

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "demo_config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        B.main(["--eval-only", "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"), "--eval", "1"])
    assert e.value.code == 2 and "is not a demo config" in capsys.readouterr().err
