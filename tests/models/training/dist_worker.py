"""One process of the 2-process gloo launch that tests/models/training/test_distributed.py starts (the environment
torchrun sets: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Runs, in one launch:

  ddp_full   `interplay train` (cli.main) of a KineMask branch, to the end
  ddp_cut    the same run through config.run, cancelled on rank 0 only after step 1 (every rank stops there)
  fsdp_cut   a whole tiny CogVideoX (FSDP2), cancelled the same way after step 1

argv: WORK_DIR (holds ddp.toml and fsdp.toml, written by the test)."""
import sys
from pathlib import Path

import torch


def main(work: Path) -> int:
    torch.set_num_threads(1)
    from interplay.models import distributed, runtime
    from interplay.models.training import cli
    from interplay.models.training import config as C

    assert distributed.init() == 2
    rc = cli.main([str(work / "ddp.toml"), "--out", str(work / "ddp_full")])
    assert rc == 0, rc

    def cancel_after_first(step, loss, lr):
        if step == 1 and distributed.rank() == 0:
            runtime.request_interrupt()

    for name, out in (("ddp.toml", "ddp_cut"), ("fsdp.toml", "fsdp_cut")):
        run = C.load_config(work / name)
        run.out_dir = work / out
        try:
            C.run(run, on_step=cancel_after_first)
        except runtime.Interrupted:
            pass
        else:
            raise AssertionError(f"{name}: the cancel on rank 0 did not stop rank {distributed.rank()}")
    distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
