"""One process of the 2-process gloo launch of test_parallel.py: runs every case of kit/parallel_cases.py with its
parallel setting and saves this process's latents (``<work>/<case>.rank<r>.safetensors``). argv: WORK ENGINES."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main(work: Path, engines: list[str]) -> int:
    torch.set_num_threads(1)
    from kit import parallel_cases as P

    from interplay.models import distributed

    assert distributed.init() == 2
    for name, call in P.cases(engines, distributed.rank()).items():
        out = call()
        save_file({"latents": out.contiguous()}, str(work / f"{name}.rank{distributed.rank()}.safetensors"))
    distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), [e for e in sys.argv[2].split(",") if e]))
