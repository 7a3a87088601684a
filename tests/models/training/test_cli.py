"""`interplay train CONFIG`: a tiny KineMask run from a sandbox folder, Ctrl-C style stop + resume, named errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from interplay.models import runtime
from interplay.models.training import cli
from interplay.models.training import config as C
from interplay.models.training import trainer as T


@pytest.fixture(scope="module")
def data_dir(push_clips):
    return push_clips


TOML = """
task = "kinemask_branch"
out_dir = "{out}"

[backbone]
random = "tiny"
dtype = "fp32"
device = "cpu"

[dataset]
root = "{data}"
frames = 9

[options]
num_layers = 1
max_text_length = 8
stage = {stage}

[train]
steps = {steps}
lr = 1e-3
batch_size = 1
checkpoint_every = 1
seed = 3
"""


def _write(tmp_path, name="run.toml", stage=1, steps=3, out="out", data=""):
    p = tmp_path / name
    p.write_text(TOML.format(out=out, data=data, stage=stage, steps=steps))
    return p


def test_train_interrupt_resume_matches_uninterrupted(tmp_path, data_dir, capsys):
    ref = _write(tmp_path, "ref.toml", out="ref", data=data_dir)
    assert cli.main([str(ref)]) == 0
    assert "done, 3 steps" in capsys.readouterr().out
    run = _write(tmp_path, "run.toml", out="run", data=data_dir)
    runtime.request_interrupt()  # as the first Ctrl-C does: stop at the first step boundary, saving
    assert cli.main([str(run)]) == 130
    assert "checkpoint saved" in capsys.readouterr().err
    assert T.read_state(tmp_path / "run")[1]["step"] == 1
    assert cli.main([str(run)]) == 0
    assert "resumed from 1" in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "ref" / T.CHECKPOINT)), load_file(str(tmp_path / "run" / T.CHECKPOINT))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from interplay.models.control.kinemask import load_branch

    assert load_branch(tmp_path / "run" / T.CHECKPOINT).kind == "kinemask"
    assert (tmp_path / "run" / T.CURVE).stat().st_size > 0
    # stage 2 continues the stage-1 branch through options.branch; --steps and --out override the file
    d = C.read_config_file(_write(tmp_path, "s2.toml", stage=2, out="ignored", data=data_dir))
    d["options"]["branch"] = str(tmp_path / "run" / T.CHECKPOINT)
    (tmp_path / "s2.json").write_text(json.dumps(d))
    assert cli.main([str(tmp_path / "s2.json"), "--steps", "1", "--out", str(tmp_path / "s2")]) == 0
    meta = T.read_state(tmp_path / "s2")[1]
    assert meta["task_config"]["stage"] == 2 and meta["step"] == 1


def test_named_config_errors(tmp_path, capsys):
    p = _write(tmp_path, data=tmp_path)
    p.write_text(p.read_text().replace("lr = 1e-3", "lrate = 1e-3"))
    assert cli.main([str(p)]) == 2
    assert "unknown key(s) lrate" in capsys.readouterr().err
    d = C.read_config_file(_write(tmp_path, "b.toml", data=tmp_path))
    d["options"]["stagee"] = 2
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'stagee' in \\[options\\] for task 'kinemask_branch'"):
        C.parse_config(d)
    d = C.read_config_file(_write(tmp_path, "c.toml", data=tmp_path))
    d["task"] = "dreambooth"
    with pytest.raises(ValueError, match="'task' must be one of .*kinemask_branch"):
        C.parse_config(d)
    d = C.read_config_file(_write(tmp_path, "d.toml", data=tmp_path))
    d["backbone"]["source"] = "x"
    with pytest.raises(ValueError, match="exactly one"):
        C.parse_config(d)
    (tmp_path / "bad.toml").write_text("task = ")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        C.read_config_file(tmp_path / "bad.toml")
    assert cli.main([str(tmp_path / "missing.toml")]) == 2


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    d = C.read_config_file(_write(tmp_path, data="clips"))
    rc = C.parse_config(d, base_dir=tmp_path)
    assert rc.out_dir == tmp_path / "out" and rc.dataset["root"] == str(tmp_path / "clips")
    assert rc.train.steps == 3 and rc.train.betas == (0.9, 0.95) and rc.backbone["family"] == "cogvideox"
    d["task"] = "lora"
    d["options"] = {"rank": 4, "target_modules": ["to_q", "to_v"], "max_text_length": 8}
    assert C.parse_config(d).options["rank"] == 4
