"""Start a worker script as N processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), on gloo, with a timeout on every collective and on the whole launch: a failing or stuck process fails
the test with its log instead of hanging it."""
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Path, args=(), world: int = 2, timeout: float = 240, backend: str | None = "gloo") -> list[str]:
    """Run ``python worker *args`` as ``world`` ranks; returns their logs; raises AssertionError naming the rank
    that failed (or timed out). ``backend`` None: the pack's choice (NCCL when CUDA is present)."""
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               INTERPLAY_DIST_TIMEOUT="120" if backend == "gloo" else "1800", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("INTERPLAY_DIST_BACKEND", None)
    if backend is not None:
        env["INTERPLAY_DIST_BACKEND"] = backend
    procs = [subprocess.Popen([sys.executable, str(worker), *map(str, args)], env=dict(env, RANK=str(r),
                              LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    try:
        for r, p in enumerate(procs):
            try:
                logs.append(p.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                raise AssertionError(f"rank {r} of {worker.name} did not finish in {timeout} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} of {worker.name} exited {p.returncode}:\n{log[-4000:]}"
    return logs
