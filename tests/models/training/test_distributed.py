"""Multi-process training on CPU: 2 gloo processes launched like torchrun (dist_worker.py) train a KineMask branch
(DDP) and a whole tiny CogVideoX (FSDP2); their weights equal a one-process run with the same global batch, and a
run cancelled in the launch resumes in one process to the weights of an uninterrupted run."""
from pathlib import Path

import pytest
from kit.launch import launch
from safetensors.torch import load_file

from interplay.models.training import cli
from interplay.models.training import trainer as T

# Two processes sum the micro-batch gradients in another order than one: float32 rounding, amplified a little by
# Adam's normalisation. Measured max |dw| on a 2-core CPU: DDP 6e-8, FSDP2 resumed 1.2e-7, DDP resumed 0.
ATOL = 1e-6

BRANCH = """
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

[train]
steps = {steps}
lr = 1e-3
batch_size = 1
grad_accum = 2
checkpoint_every = 1
ema_decay = 0.9
seed = 3
"""

BACKBONE = BRANCH.replace('task = "kinemask_branch"', 'task = "cogvideox_backbone"').replace(
    "[options]\nnum_layers = 1\nmax_text_length = 8\n", "[options]\nmax_text_length = 8\n").replace(
    "ema_decay = 0.9\n", "")


def _weights(folder: Path, name=T.CHECKPOINT) -> dict:
    return load_file(str(folder / name))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def launched(tmp_path_factory, push_clips):
    work = tmp_path_factory.mktemp("dist")
    (work / "ddp.toml").write_text(BRANCH.format(out="unused", data=push_clips, steps=3))
    (work / "fsdp.toml").write_text(BACKBONE.format(out="unused", data=push_clips, steps=2))
    launch(Path(__file__).with_name("dist_worker.py"), [work])
    return work


def test_ddp_run_equals_one_process_and_rank0_writes(launched, tmp_path):
    ref = tmp_path / "ref"
    assert cli.main([str(launched / "ddp.toml"), "--out", str(ref)]) == 0
    full = launched / "ddp_full"
    d = _max_diff(_weights(ref), _weights(full))
    assert d < ATOL, f"DDP vs one process: max |dw| {d:.3g}"
    d = _max_diff(_weights(ref, T.EMA_CHECKPOINT), _weights(full, T.EMA_CHECKPOINT))
    assert d < ATOL, f"EMA: max |dw| {d:.3g}"
    meta = T.read_state(full)[1]
    assert (meta["step"], meta["cursor"], meta["world_size"]) == (3, 6, 2)  # the global cursor: 3 x 1 x 2 samples
    # the step losses (each the sum of both ranks' micro-batches) are the one-process ones
    ref_losses = T.read_state(ref)[1]["losses"]
    assert meta["losses"] == pytest.approx(ref_losses, rel=1e-5)
    lines = (full / T.LOSSES).read_text().splitlines()
    assert lines[0] == "step,loss,lr" and len(lines) == 4  # one writer: no doubled lines
    assert not [p for p in full.iterdir() if p.name.startswith(".")]  # no temp files left by any rank


def test_ddp_cancel_then_resume_in_one_process(launched, tmp_path):
    cut = launched / "ddp_cut"
    assert T.read_state(cut)[1]["step"] == 1  # every rank stopped at the same step
    ref = tmp_path / "ref"
    assert cli.main([str(launched / "ddp.toml"), "--out", str(ref)]) == 0
    assert cli.main([str(launched / "ddp.toml"), "--out", str(cut)]) == 0  # one process, from the 2-process state
    assert T.read_state(cut)[1]["world_size"] == 1
    d = _max_diff(_weights(ref), _weights(cut))
    assert d < ATOL, f"resumed in 1 process vs uninterrupted: max |dw| {d:.3g}"


def test_fsdp_cancel_then_resume_in_one_process(launched, tmp_path):
    cut = launched / "fsdp_cut"
    tensors, meta = T.read_state(cut)
    assert meta["step"] == 1
    # the state holds whole (gathered) weights and optimizer moments, not one rank's shards
    w = next(k for k in tensors if k.startswith("model.") and k.endswith("proj_out.weight"))
    opt_keys = [k for k in tensors if k.startswith("optim.") and k.endswith("exp_avg")]
    ref = tmp_path / "ref"
    assert cli.main([str(launched / "fsdp.toml"), "--out", str(ref)]) == 0
    ref_sd = _weights(ref)
    assert tensors[w].shape == ref_sd[w[len("model."):]].shape
    assert {tuple(tensors[k].shape) for k in opt_keys} <= {tuple(v.shape) for v in ref_sd.values()}
    assert cli.main([str(launched / "fsdp.toml"), "--out", str(cut)]) == 0
    d = _max_diff(ref_sd, _weights(cut))
    assert d < ATOL, f"FSDP resumed in 1 process vs uninterrupted: max |dw| {d:.3g}"


def test_launch_settings_are_checked_by_name():
    class Branch:
        def config(self):
            return {"task": "kinemask_branch"}

    class Whole(Branch):
        def fsdp_modules(self):
            return None, []

    with pytest.raises(ValueError, match="grad_accum 1 with 2 processes.*multiple of 2"):
        T._parallel_mode(Branch(), T.TrainConfig(grad_accum=1), 2)
    with pytest.raises(ValueError, match="'fsdp' needs a task"):
        T._parallel_mode(Branch(), T.TrainConfig(grad_accum=2, parallel="fsdp"), 2)
    with pytest.raises(ValueError, match="fp16 with FSDP"):
        T._parallel_mode(Whole(), T.TrainConfig(grad_accum=2, precision="fp16"), 2)
    with pytest.raises(ValueError, match="'parallel' must be one of auto, ddp, fsdp"):
        T.TrainConfig(parallel="zero3")
    assert [T._parallel_mode(t, T.TrainConfig(grad_accum=4), w) for t, w in
            ((Branch(), 1), (Branch(), 2), (Whole(), 2), (Whole(), 4))] == ["none", "ddp", "fsdp", "fsdp"]
