"""Every command in the README's ```bash blocks runs as printed in a fresh shell after scripts/setup.sh: it names
an existing script, a module that exists, or an `interplay` sub-command, through the virtual environment's
programs (a bare `interplay` or `python` is not on PATH there), and every --flag it passes is one the program
accepts (read from its own --help)."""
import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import pytest

from interplay.nodes import cli

ROOT = Path(__file__).resolve().parents[1]
# Programs of the user's system or of another environment (the ComfyUI venv's pip), not of this repository.
EXTERNAL = {"cd", "git", "pip", "curl", "ln", "sudo", "apt-get", "python3", "source", "node"}


def readme_commands(text: str) -> list[str]:
    """Each simple command of the ```bash blocks: continuation lines joined, comments dropped, split at && ; |."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            for part in re.split(r"\s*(?:&&|;|\|\|?)\s*", line):
                if part:
                    out.append(part)
    return out


def _tokens(command: str) -> list[str]:
    toks = shlex.split(command)
    while toks and re.match(r"^[A-Z_][A-Z0-9_]*=", toks[0]):  # VAR=value prefixes
        toks.pop(0)
    return toks


def _help(run) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was already imported by the tests
        try:
            run()
        except SystemExit:
            pass
    return buf.getvalue()


def _flags_missing(flags: list[str], help_text: str) -> list[str]:
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def check_command(command: str) -> list[str]:
    toks = _tokens(command)
    if not toks:
        return []
    exe, args = toks[0], toks[1:]
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    if exe in EXTERNAL or exe.endswith("/bin/pip"):
        return []
    if exe.endswith("bin/torchrun"):  # a launcher: check its options, then the program it launches
        if "--no-python" not in args:
            return [f"{command!r}: torchrun needs --no-python to launch a console script"]
        inner = args[args.index("--no-python") + 1:]
        bad = _flags_missing([a.split("=", 1)[0] for a in args[:args.index("--no-python")] if a.startswith("--")],
                             _help(lambda: _torchrun_help()))
        return [f"{command!r}: torchrun has no option {f}" for f in bad] + check_command(shlex.join(inner))
    if exe in ("interplay", "python"):
        return [f"{command!r}: a bare {exe!r} is not on PATH after scripts/setup.sh; write .venv/bin/{exe}"]
    if exe.endswith("bin/interplay"):
        sub = [a for a in args[:2] if re.fullmatch(r"[a-z]+", a)]
        if not sub or sub[0] not in cli.COMMANDS:
            return [f"{command!r}: no interplay sub-command {args[:1]}"]
        text = _help(lambda: cli.main(sub + ["--help"]))
        return [f"{command!r}: `interplay {' '.join(sub)}` has no option {f}" for f in _flags_missing(flags, text)]
    if exe.endswith("bin/python"):
        if args[:2] == ["-m", "pytest"]:
            return []
        if args[:1] == ["-m"]:
            mod = args[1]
            if importlib.util.find_spec(mod) is None:
                return [f"{command!r}: no module {mod}"]
            run, rest = (lambda: runpy.run_module(mod, run_name="__main__", alter_sys=True)), args[2:]
        else:
            script = ROOT / args[0]
            if not script.is_file():
                return [f"{command!r}: no script {args[0]}"]
            run, rest = (lambda: runpy.run_path(str(script), run_name="__main__")), args[1:]
        argv = sys.argv
        sys.argv = [exe, "--help"]
        try:
            text = _help(run)
        finally:
            sys.argv = argv
        flags = [a.split("=", 1)[0] for a in rest if a.startswith("--")]
        return [f"{command!r}: no option {f} (from its --help)" for f in _flags_missing(flags, text)]
    if (ROOT / exe).is_file():
        return []
    return [f"{command!r}: {exe!r} is neither this repository's script nor a known program"]


def _torchrun_help():
    from torch.distributed.run import get_args_parser

    get_args_parser().print_help()


def test_every_readme_command_runs_as_printed():
    commands = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) > 20
    problems = [p for c in commands for p in check_command(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command, needle", [
    ("interplay run workflows/sandbox_push.json", "bare 'interplay'"),
    (".venv/bin/interplay render x.json", "no interplay sub-command"),
    (".venv/bin/interplay run workflows/sandbox_push.json --output o", "has no option --output"),
    (".venv/bin/python -m interplay.models.demo.nobuild --out o", "no module"),
    (".venv/bin/python -m interplay.models.demo.build --evals 3", "no option --evals"),
    (".venv/bin/python scripts/build_everything.py", "no script"),
    (".venv/bin/torchrun --nproc-per-node 2 .venv/bin/interplay train r.toml", "needs --no-python"),
    (".venv/bin/torchrun --nprocs 2 --no-python .venv/bin/interplay train r.toml", "has no option --nprocs"),
    (".venv/bin/torchrun --nproc-per-node 2 --no-python .venv/bin/interplay train r.toml --gpus 2", "no option --gpus"),
])
def test_the_checker_names_what_would_not_run(command, needle):
    assert any(needle in p for p in check_command(command)), check_command(command)
