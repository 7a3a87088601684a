"""The package's layering, read from the source's imports (AST, nothing is executed): the engine never reaches
ComfyUI except through models/runtime.py, backbones never import the demo or each other in a cycle, conditions
never import a backbone, and family samplers never import a method's control module."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Absolute-ised module names a file imports (relative imports resolved against the package path)."""
    rel = path.relative_to(ROOT).with_suffix("")
    pkg = ["interplay", *rel.parts[:-1]]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "find_spec" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    return out


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_engine_reaches_comfyui_only_through_runtime():
    for f in _files("models"):
        if f.name == "runtime.py":
            continue
        bad = {m for m in _imports(f) if m.split(".")[0] in ("comfy", "folder_paths", "comfy_api", "nodes", "server")}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}; go through models/runtime.py"


def test_backbones_import_no_demo_and_no_cycle():
    for f in _files("models/backbones"):
        mods = _imports(f)
        assert not any(m.startswith("interplay.models.demo") for m in mods), f"{f.name} imports the demo"
    assert not any(m.startswith("interplay.models.backbones.svd")
                   and m.split(".")[3] == "svd" for m in _imports(ROOT / "models/backbones/svd_convert.py")), \
        "svd_convert.py imports svd.py, which imports it: use svd_configs.py"


def test_conditions_do_not_import_backbones():
    for f in _files("models/conditions"):
        bad = {m for m in _imports(f) if m.startswith("interplay.models.backbones")}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}; take the rule from the caller"


def test_family_samplers_import_no_method():
    from interplay.models.control import registry

    methods = {f"interplay.models.control.{s.kind}" for s in registry.kinds()}
    for f in _files("models/sampling"):
        bad = {m for m in _imports(f) if any(m == x or m.startswith(x + ".") for x in methods)}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}; ask the branch registry"


def test_torch_distributed_only_through_models_distributed():
    """Everything multi-process goes through models/distributed.py, so the rest stays single-process code."""
    own = ROOT / "models" / "distributed.py"
    bad = [str(p.relative_to(ROOT)) for p in _files("models") + _files("nodes")
           if p != own and any(m.startswith(("torch.distributed", "torch.nn.parallel")) for m in _imports(p))]
    assert bad == []
    assert any(m.startswith("torch.distributed") for m in _imports(own))
