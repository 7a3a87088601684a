"""Multi-GPU sampling maths on CPU: 2 gloo processes (parallel_worker.py) run the Wan and CogVideoX samplers with
CFG-parallel (rows split, controls included) and sequence-parallel (Ulysses attention over an uneven 2 + 1 frame
split; CogVideoX also with a positional table; Wan with a KV-cache-like attachment holding each process's share of
extra keys) through each engine installed here (torch.distributed's all-to-all always; yunchang when importable),
and every process's latents equal the one-process sampler's."""
from pathlib import Path

import pytest
import torch
from kit import parallel_cases as cases
from kit.launch import launch
from safetensors.torch import load_file

from interplay.models.sampling import parallel as P

HERE = Path(__file__).parent
ENGINES = ["torch"] + (["yunchang"] if P.yunchang_available() else [])
# float32 on CPU. Measured on a 2-core CPU: sequence parallel (both engines) bitwise equal (the exchanges only move
# data); CFG-parallel 1.7e-6 (Wan) and 2.9e-6 (CogVideoX with a control): each process runs batch 1 where one
# process runs the rows as one batch, and CPU kernels round batch 1 and 2 differently. Allowed: 1e-5.
ATOL = 1e-5


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    cases.wan_bundle(), cases.cog_bundle()  # the kit's tiny models are built here once, before the workers read them
    work = tmp_path_factory.mktemp("parallel")
    launch(HERE / "parallel_worker.py", [work, ",".join(ENGINES)], timeout=300)
    return work


@pytest.mark.parametrize("name", ["wan_cfg", "wan_cfg_one_row", "cog_cfg_control", "wan_sequence_cache"] + [f"{fam}_sequence{pos}_{e}" for e in ENGINES
                                  for fam, pos in (("wan", ""), ("cog", ""), ("cog", "_positions"))])
def test_parallel_output_equals_one_process(name, launched):
    want = cases.reference(name)
    for r in (0, 1):
        got = load_file(str(launched / f"{name}.rank{r}.safetensors"))["latents"]
        assert got.shape == want.shape
        d = float((got - want).abs().max())
        assert d <= ATOL, f"{name} rank {r}: max |d| {d:.3g}"
    assert torch.equal(load_file(str(launched / f"{name}.rank0.safetensors"))["latents"],
                       load_file(str(launched / f"{name}.rank1.safetensors"))["latents"])


def test_frame_and_row_splits():
    par = P.Parallel(cfg=2, sp=2, sp_rank=1, cfg_rank=1)
    assert par.frame_sizes(21) == [11, 10] and par.frame_range(21) == (11, 21)
    assert P.Parallel(sp=4).frame_sizes(21) == [6, 5, 5, 5]
    assert P.Parallel(sp=2).frame_sizes(13, multiple=2) == [6, 7]  # groups of the temporal patch; the rest last
    assert par.row_groups(("uncond", "cond", "no_control")) == [["uncond", "cond"], ["no_control"]]
    assert par.row_groups(("cond",)) == [["cond"], []]  # (split_rows then runs the one row on both)
    with pytest.raises(ValueError, match="3 latent frames cannot be split over 4"):
        P.Parallel(sp=4).frame_sizes(3)


def test_sequence_parallel_refuses_whole_clip_attachments_and_odd_heads():
    from interplay.models.backbones.base import Attachment

    class Observer(Attachment):
        pass

    class Shardable(Attachment):
        frame_shards = True

    par = P.Parallel(sp=2)
    par.check_attachments([Shardable()], "Wan sampler")
    with pytest.raises(ValueError, match="Wan sampler: parallel 'sequence'.*Observer needs the whole clip.*'cfg'"):
        par.check_attachments([Shardable(), Observer()], "Wan sampler")
    P.Parallel(sp=1).check_attachments([Observer()], "x")  # CFG-parallel runs every attachment
    with pytest.raises(ValueError, match=r"heads \(5\) to divide evenly"):
        P.Parallel(sp=2).check_heads(5, "CogVideoX sampler")
    assert P.plan("sequence") is None and P.plan("off") is None  # one process: nothing to split
    with pytest.raises(ValueError, match="parallel must be one of off, auto, cfg, sequence"):
        P.plan("tensor")


def test_plan_layouts_and_the_auto_fallback(monkeypatch):
    from interplay.models.backbones.base import Attachment

    class Whole(Attachment):
        pass

    monkeypatch.setattr(P.distributed, "init", lambda: 4)
    monkeypatch.setattr(P.distributed, "rank", lambda: 3)
    monkeypatch.setattr(P, "_groups", lambda cfg, span: ([f"cfg{s}" for s in range(span)],
                                                         [f"sp{c}" for c in range(cfg)]))
    p = P.plan("auto", rows=2, heads=40, frames=21)  # rank 3 of cfg 2 x sequence 2
    assert (p.cfg, p.sp, p.cfg_rank, p.sp_rank, p.cfg_group, p.sp_group) == (2, 2, 1, 1, "cfg1", "sp1")
    p = P.plan("auto", rows=2, heads=40, frames=21, attachments=[Whole()])  # a whole-clip control: replicas
    assert (p.cfg, p.sp, p.cfg_rank, p.cfg_group, p.sp_group) == (2, 1, 1, "cfg1", None)
    assert P.plan("auto", rows=1, heads=5, frames=21) is None  # one row, odd heads: nothing to split
    with pytest.raises(ValueError, match=r"heads \(5\) to divide evenly"):
        P.plan("sequence", rows=1, heads=5, frames=21)
    with pytest.raises(ValueError, match="parallel 'cfg' puts one guidance row per process.*2 row\\(s\\) for 4"):
        P.plan("cfg", rows=2)
    p = P.plan("sequence", rows=2, heads=40, frames=21)
    assert (p.cfg, p.sp, p.sp_rank, p.frame_range(21)) == (1, 4, 3, (16, 21))
