"""models/runtime.py on both of its paths: standalone (models root, terminal progress, threading interrupt) and
inside ComfyUI, exercised with fake `folder_paths`, `comfy.utils` and `comfy.model_management` modules."""
import io
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from interplay.models import runtime


# ------------------------------------------------------------------------------------------ standalone
def test_standalone_is_not_comfyui():
    assert runtime.in_comfyui() is False  # conftest's process never imports ComfyUI


def test_models_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runtime.models_root() == tmp_path.resolve() / "models"
    monkeypatch.setenv("INTERPLAY_MODELS_DIR", str(tmp_path / "env"))
    assert runtime.models_root() == (tmp_path / "env").resolve()
    runtime.set_models_root(tmp_path / "cli")
    assert runtime.models_root() == (tmp_path / "cli").resolve()
    assert runtime.model_folders("vae") == [(tmp_path / "cli" / "vae").resolve()]
    runtime.set_models_root(None)
    assert runtime.models_root() == (tmp_path / "env").resolve()


def test_models_root_never_the_engine_folder(monkeypatch):
    # run from the repository root, ./models is the engine's source: user weights go to ./user_models
    pack = Path(runtime.__file__).resolve().parent.parent
    monkeypatch.delenv("INTERPLAY_MODELS_DIR", raising=False)
    monkeypatch.chdir(pack)
    assert runtime.models_root() == pack / "user_models"


def _layout(root: Path):
    (root / "diffusion_models" / "sub").mkdir(parents=True)
    (root / "diffusion_models" / "a.safetensors").write_bytes(b"x")
    (root / "diffusion_models" / "sub" / "b.sft").write_bytes(b"x")
    (root / "diffusion_models" / "notes.txt").write_text("not a model")
    (root / "diffusers" / "tiny_cogvideox").mkdir(parents=True)
    (root / "secret.safetensors").write_bytes(b"x")


def test_list_models_and_model_path(tmp_path):
    root = tmp_path / "models"
    _layout(root)
    runtime.set_models_root(root)
    assert runtime.list_models("diffusion_models") == ["a.safetensors", "sub/b.sft"]
    assert runtime.list_models("diffusion_models", extensions=None) == ["a.safetensors", "notes.txt", "sub/b.sft"]
    assert runtime.list_models("diffusers", folders_only=True) == ["tiny_cogvideox"]
    assert runtime.list_models("vae") == []  # a missing folder is an empty list, not an error
    assert runtime.model_path("diffusion_models", "sub/b.sft") == (root / "diffusion_models/sub/b.sft").resolve()
    assert runtime.model_path("diffusers", "tiny_cogvideox").is_dir()


@pytest.mark.parametrize("name", ["../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd",
                                  "sub/../../diffusers/tiny_cogvideox"])
def test_model_path_rejects_escapes(tmp_path, name):
    _layout(tmp_path / "models")
    runtime.set_models_root(tmp_path / "models")
    with pytest.raises(ValueError, match="outside the diffusion_models folder"):
        runtime.model_path("diffusion_models", name)


def test_model_path_symlinks_count_by_their_target(tmp_path, monkeypatch):
    # A symlink whose target leaves the folder is refused (the same message whether the target exists or not);
    # one inside the folder is fine; the owner's switch lifts the rule.
    store = tmp_path / "store"
    store.mkdir()
    (store / "big.safetensors").write_bytes(b"x")
    vae = tmp_path / "models" / "vae"
    vae.mkdir(parents=True)
    (vae / "big.safetensors").symlink_to(store / "big.safetensors")
    (vae / "gone.safetensors").symlink_to(store / "gone.safetensors")
    (vae / "real.safetensors").write_bytes(b"y")
    (vae / "alias.safetensors").symlink_to(vae / "real.safetensors")
    runtime.set_models_root(tmp_path / "models")
    assert runtime.list_models("vae") == ["alias.safetensors", "big.safetensors", "real.safetensors"]
    msgs = []
    for name in ("big.safetensors", "gone.safetensors"):
        with pytest.raises(runtime.PathRefused) as ei:
            runtime.model_path("vae", name)
        msgs.append(str(ei.value).replace(name, "NAME"))
    assert msgs[0] == msgs[1] and "INTERPLAY_ALLOW_ANY_PATH=1" in msgs[0] and "extra_model_paths.yaml" in msgs[0]
    assert runtime.model_path("vae", "alias.safetensors").read_bytes() == b"y"
    monkeypatch.setenv("INTERPLAY_ALLOW_ANY_PATH", "1")
    assert runtime.model_path("vae", "big.safetensors").read_bytes() == b"x"


def test_model_path_errors_name_folders(tmp_path):
    runtime.set_models_root(tmp_path / "models")
    with pytest.raises(FileNotFoundError) as ei:
        runtime.model_path("vae", "missing.safetensors")
    msg = str(ei.value)
    assert "missing.safetensors" in msg and str((tmp_path / "models" / "vae").resolve()) in msg
    with pytest.raises(ValueError, match="no vae model name given"):
        runtime.model_path("vae", "  ")
    with pytest.raises(ValueError, match="unknown model folder 'weights'"):
        runtime.list_models("weights")


def test_progress_counts_and_draws(monkeypatch):
    monkeypatch.delenv("INTERPLAY_QUIET", raising=False)
    stream = io.StringIO()
    p = runtime.Progress(4, desc="sampling", stream=stream, min_interval=0.0)
    called = []
    for i in range(3):
        p.update(preview=lambda: called.append(1), text=f"step {i}")
    assert p.value == 3 and p.eta() is not None and p.eta() >= 0
    p.update(5)  # clamps at total
    assert p.value == 4
    assert called == []  # previews are only rendered when a UI can show them
    lines = stream.getvalue().splitlines()
    # a non-tty stream (a log) gets the first update, one line per new 10 % decile, and the last
    assert [ln.split()[2] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[0].startswith("sampling [######") and "step 2" in lines[-1]
    assert runtime.Progress(0).total == 1
    log = io.StringIO()
    q = runtime.Progress(100, desc="train", stream=log, min_interval=0.0)
    for _ in range(100):
        q.update()
    assert [ln.split()[2] for ln in log.getvalue().splitlines()] == ["1/100"] + [f"{k}/100" for k in range(10, 101, 10)]


def test_progress_quiet_env(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv("INTERPLAY_QUIET", "0")  # "0" means not quiet
    runtime.Progress(2, stream=stream, min_interval=0.0).update()
    assert stream.getvalue()
    stream2 = io.StringIO()
    monkeypatch.setenv("INTERPLAY_QUIET", "1")
    runtime.Progress(2, stream=stream2, min_interval=0.0).update(2)
    assert stream2.getvalue() == ""


def test_progress_is_the_interrupt_point():
    p = runtime.progress(10, "loop")
    p.update()
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        p.update()
    assert p.value == 2  # the step that saw the cancel is counted, then it raises
    p.update()  # the request is consumed by the raise
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        runtime.interrupt_aware_sleep(5.0)
    runtime.request_interrupt()
    runtime.clear_interrupt()
    runtime.check_interrupt()


def test_dtypes_and_devices_on_cpu(monkeypatch):
    assert runtime.default_dtype("cpu") is torch.float32
    assert runtime.parse_dtype("auto", torch.device("cpu")) is torch.float32
    assert [runtime.parse_dtype(n) for n in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16,
                                                                          torch.float32]
    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32; got 'float8'"):
        runtime.parse_dtype("float8")
    monkeypatch.setenv("INTERPLAY_DEVICE", "cpu")
    assert runtime.compute_device() == torch.device("cpu")
    assert runtime.offload_device() == torch.device("cpu")
    runtime.empty_cache()  # no-op without CUDA


def test_standalone_directories(tmp_path, monkeypatch):
    runtime.set_output_directory(tmp_path / "out")
    assert runtime.output_directory() == (tmp_path / "out").resolve()
    assert runtime.temp_directory() == (tmp_path / "out" / "temp").resolve()
    monkeypatch.setenv("INTERPLAY_INPUT_DIR", str(tmp_path / "in"))
    assert runtime.input_directory() == (tmp_path / "in").resolve()
    assert not (tmp_path / "out").exists()  # asking for a directory never creates it


# ------------------------------------------------------------------------------------------ ComfyUI
class FakeComfy:
    """Stand-ins for the parts of ComfyUI that runtime.py touches, recording what it does."""

    def __init__(self, root: Path):
        self.bars: list = []
        self.emptied = 0
        self.interrupt = False
        fake = self

        class InterruptProcessingException(Exception):
            pass

        class ProgressBar:
            def __init__(self, total):
                self.total, self.updates = total, []
                fake.bars.append(self)

            def update_absolute(self, value, total=None, preview=None):
                self.updates.append((value, total, preview))

        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException

        def interrupt_current_processing(value=True):
            fake.interrupt = value

        def throw_exception_if_processing_interrupted():
            if fake.interrupt:
                fake.interrupt = False
                raise InterruptProcessingException()

        mm.interrupt_current_processing = interrupt_current_processing
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.get_torch_device = lambda: torch.device("cuda", 1)  # a device object needs no GPU
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.should_use_bf16 = lambda device=None: False
        mm.should_use_fp16 = lambda device=None: True
        mm.soft_empty_cache = lambda force=False: setattr(fake, "emptied", fake.emptied + 1)

        cu = types.ModuleType("comfy.utils")
        cu.ProgressBar = ProgressBar
        comfy = types.ModuleType("comfy")
        comfy.model_management, comfy.utils = mm, cu

        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(root / "models")
        fp.folder_names_and_paths = {
            "diffusion_models": ([str(root / "models" / "diffusion_models"), str(root / "extra" / "unet")],
                                 {".safetensors", ".sft"}),
            "vae": ([str(root / "models" / "vae")], {".safetensors"}),
        }

        def add_model_folder_path(name, path, is_default=False):
            paths, exts = fp.folder_names_and_paths.setdefault(name, ([], set()))
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)

        def get_folder_paths(name):
            return list(fp.folder_names_and_paths[name][0])

        def get_filename_list(name):
            out = set()
            for base in get_folder_paths(name):
                b = Path(base)
                if b.is_dir():
                    out.update(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
            return sorted(out)

        def get_full_path(name, filename):
            for base in get_folder_paths(name):
                p = Path(base) / filename
                if p.is_file():
                    return str(p)
            return None

        fp.add_model_folder_path, fp.get_folder_paths = add_model_folder_path, get_folder_paths
        fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
        fp.get_output_directory = lambda: str(root / "comfy_output")
        fp.get_temp_directory = lambda: str(root / "comfy_temp")
        fp.get_input_directory = lambda: str(root / "comfy_input")
        self.mm, self.cu, self.fp, self.comfy = mm, cu, fp, comfy


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    fake = FakeComfy(tmp_path)
    monkeypatch.setitem(sys.modules, "comfy", fake.comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", fake.mm)
    monkeypatch.setitem(sys.modules, "comfy.utils", fake.cu)
    monkeypatch.setitem(sys.modules, "folder_paths", fake.fp)
    monkeypatch.setattr(runtime, "Interrupted", runtime.Interrupted)  # bind_comfyui rebinds it; restored after
    return fake


def test_comfyui_detected_and_forced_standalone(comfy, monkeypatch):
    assert runtime.in_comfyui() is True
    monkeypatch.setattr(runtime, "_force_standalone", True)
    assert runtime.in_comfyui() is False


def test_register_pack_folders(comfy, tmp_path):
    runtime.register_model_folders()
    runtime.register_model_folders()  # idempotent
    fnp = comfy.fp.folder_names_and_paths
    assert fnp["sam2"][0] == [str(tmp_path / "models" / "sam2")]
    assert fnp["interplay"][0] == [str(tmp_path / "models" / "interplay")]
    assert runtime.model_folders("sam2") == [tmp_path / "models" / "sam2"]


def test_model_folders_follow_folder_paths(comfy, tmp_path):
    # ComfyUI's own folders, in its priority order (extra_model_paths.yaml adds the second one)
    assert runtime.model_folders("diffusion_models") == [tmp_path / "models" / "diffusion_models",
                                                         tmp_path / "extra" / "unet"]
    (tmp_path / "extra" / "unet").mkdir(parents=True)
    (tmp_path / "extra" / "unet" / "w.safetensors").write_bytes(b"x")
    assert runtime.list_models("diffusion_models") == comfy.fp.get_filename_list("diffusion_models") == \
        ["w.safetensors"]
    assert str(runtime.model_path("diffusion_models", "w.safetensors")) == \
        comfy.fp.get_full_path("diffusion_models", "w.safetensors")
    with pytest.raises(FileNotFoundError) as ei:
        runtime.model_path("diffusion_models", "nope.safetensors")
    assert str(tmp_path / "models" / "diffusion_models") in str(ei.value)
    assert str(tmp_path / "extra" / "unet") in str(ei.value)
    # a kind folder_paths does not know yet (pack folder before registration) lives under models_dir
    assert runtime.model_folders("controlnet") == [tmp_path / "models" / "controlnet"]


def test_progress_drives_comfyui_bar_with_preview(comfy):
    p = runtime.progress(3, "sampling")
    assert len(comfy.bars) == 1 and comfy.bars[0].total == 3
    img = Image.new("RGB", (8, 8))
    p.update()
    p.update(preview=lambda: img)
    p.set(3, preview=lambda: None)
    assert comfy.bars[0].updates == [(1, 3, None), (2, 3, ("JPEG", img, 512)), (3, 3, None)]


def test_comfyui_interrupt_maps_to_interrupted(comfy):
    assert runtime.bind_comfyui() is True
    assert runtime.Interrupted is comfy.mm.InterruptProcessingException
    p = runtime.progress(5)
    p.update()
    comfy.mm.interrupt_current_processing(True)  # what the UI's Cancel does
    with pytest.raises(runtime.Interrupted):
        p.update()
    # the headless cancel raises ComfyUI's class too, so one `except runtime.Interrupted` serves both
    runtime.request_interrupt()
    with pytest.raises(comfy.mm.InterruptProcessingException):
        runtime.check_interrupt()


def test_comfyui_devices_dtypes_and_directories(comfy, tmp_path):
    assert runtime.compute_device() == torch.device("cuda", 1)
    assert runtime.offload_device() == torch.device("cpu")
    assert runtime.default_dtype(torch.device("cuda", 1)) is torch.float16  # model_management's choice
    assert runtime.default_dtype("cpu") is torch.float32
    runtime.empty_cache()
    assert comfy.emptied == 1
    assert runtime.output_directory() == tmp_path / "comfy_output"
    assert runtime.temp_directory() == tmp_path / "comfy_temp"
    assert runtime.input_directory() == tmp_path / "comfy_input"


# ------------------------------------------------------------------------------------------ the path rule
def test_confined_path_names_annotations_and_refusals(tmp_path, monkeypatch):
    runtime.set_models_root(tmp_path / "models")
    inp, out = runtime.input_directory(), runtime.output_directory()
    for d in (inp / "a", out / "b", tmp_path / "models" / "vae", tmp_path / "elsewhere"):
        d.mkdir(parents=True)
    (out / "a").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"x")
    kw = dict(node="N", input_name="path")
    assert runtime.confined_path("a", **kw) == inp / "a"
    assert runtime.confined_path("b", search=("input", "output"), **kw) == out / "b"  # first that exists
    assert runtime.confined_path("a", search=("output", "input"), **kw) == out / "a"
    assert runtime.confined_path("new.png", search=("input", "output"), **kw) == inp / "new.png"  # none: the first
    # ComfyUI's annotated names (folder_paths.annotated_filepath): the annotation picks the folder
    assert runtime.split_annotation("clip 1.mp4 [output]") == ("clip 1.mp4", "output")
    assert runtime.confined_path("b [output]", **kw) == out / "b"
    assert runtime.confined_path("x.png [temp]", **kw) == runtime.temp_directory() / "x.png"
    assert runtime.confined_path(str(tmp_path / "models" / "vae"), **kw) == tmp_path / "models" / "vae"
    msgs = []
    for v in ("../elsewhere/x.png", str(tmp_path / "elsewhere" / "x.png"), str(tmp_path / "elsewhere" / "no.png"),
              "b [output]/../../../elsewhere/x.png", "~/x.png"):
        with pytest.raises(runtime.PathRefused) as ei:
            runtime.confined_path(v, **kw)
        msgs.append(str(ei.value).replace(repr(v), "VALUE"))
    assert len(set(msgs)) == 1 and msgs[0].startswith("N: 'path' VALUE points outside ComfyUI's input, output")
    assert "INTERPLAY_ALLOW_ANY_PATH=1" in msgs[0] and str(inp) in msgs[0]
    with pytest.raises(ValueError, match="'path' is empty"):
        runtime.confined_path("  ", **kw)
    monkeypatch.setenv("INTERPLAY_ALLOW_ANY_PATH", "1")
    assert runtime.confined_path(str(tmp_path / "elsewhere" / "x.png"), **kw) == tmp_path / "elsewhere" / "x.png"


def test_confined_glob_and_guard(tmp_path):
    inp = runtime.input_directory()
    (inp / "seq").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (inp / "seq" / "link.png").symlink_to(tmp_path / "elsewhere" / "gone.png")  # dangling: refused all the same
    kw = dict(node="N", input_name="pattern")
    runtime.confined_glob(inp / "seq", "frame_*.png", **kw)
    runtime.confined_glob(inp / "seq", "../seq/*.png", **kw)  # climbs, but stays inside
    for pat in ("../../*", str(tmp_path / "elsewhere") + "/*.png", "../../elsewhere/[ab]*"):
        with pytest.raises(runtime.PathRefused, match="'pattern'"):
            runtime.confined_glob(inp / "seq", pat, **kw)
    guard = runtime.path_guard("N", "pattern")
    assert guard(inp / "seq" / "a.png") == inp / "seq" / "a.png"
    with pytest.raises(runtime.PathRefused, match="reaches 'link.png'"):
        guard(inp / "seq" / "link.png")


def test_comfyui_path_roots(comfy, tmp_path):
    roots = [p for _, p in runtime.path_roots()]
    assert roots == [tmp_path / "comfy_input", tmp_path / "comfy_output", tmp_path / "comfy_temp",
                     tmp_path / "models", tmp_path / "extra" / "unet"]  # extra_model_paths.yaml folders too
