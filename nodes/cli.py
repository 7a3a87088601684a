"""`interplay` console script: one entry, sub-commands dispatched lazily so `interplay run` does not
import the trainer and `interplay --help` imports almost nothing.

    interplay run WORKFLOW.json [--models-dir D] [--out DIR] [--set NODE_ID.INPUT=VALUE ...]
    interplay sandbox make --preset push --n 1000 --size 64x64 --frames 13 --seed 0 OUT/
    interplay eval GENERATED REFERENCE [--out report.json]
    interplay train CONFIG.toml
    interplay matrix analyse --data DIR (--model DIR | --random tiny) [--layers all] [--json OUT]
"""
from __future__ import annotations

import importlib
import sys

# sub-command -> (module relative to the package root, function taking argv and returning an exit code)
COMMANDS = {
    "run": ("nodes.graph", "cli_main", "execute a workflow JSON (UI or API format) headlessly"),
    "sandbox": ("models.sandbox.cli", "main", "make synthetic interaction datasets"),
    "eval": ("models.sandbox.evaluate", "main", "score a generated video against a reference"),
    "train": ("models.training.cli", "main", "train a backbone, control branch or LoRA from a config"),
    "matrix": ("models.control.matrix_analysis", "main", "MATRIX tools: `matrix analyse` ranks attention layers"),
}


def _usage() -> str:
    lines = ["usage: interplay COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`interplay COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"interplay: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    pkg = __package__.rsplit(".", 1)[0]  # "interplay" when installed; the pack's name inside ComfyUI
    mod = importlib.import_module(f"{pkg}.{module}")
    return int(getattr(mod, func)(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
