"""Shared fixtures. Tiny-model builders live in tests/kit/ (importable as `kit`)."""
import os

import pytest

os.environ.setdefault("INTERPLAY_QUIET", "1")  # no terminal bars in test logs


@pytest.fixture(autouse=True)
def _fresh_runtime(tmp_path, monkeypatch):
    """Each test starts with standalone runtime state: no models root, output under tmp_path; torch's CPU thread
    count is restored afterwards (CLI tests set it, and float sums depend on it)."""
    import torch

    from interplay.models import runtime

    threads = torch.get_num_threads()

    monkeypatch.delenv("INTERPLAY_MODELS_DIR", raising=False)
    monkeypatch.delenv("INTERPLAY_ALLOW_ANY_PATH", raising=False)
    monkeypatch.setenv("INTERPLAY_INPUT_DIR", str(tmp_path / "input"))  # never ./input of the checkout
    runtime.set_models_root(None)
    runtime.set_input_directory(None)
    runtime.set_output_directory(tmp_path / "output")
    runtime.set_input_directory(None)
    runtime.clear_interrupt()
    yield
    torch.set_num_threads(threads)
    runtime.set_models_root(None)
    runtime.set_input_directory(None)
    runtime.set_output_directory(None)
    runtime.set_input_directory(None)
    runtime.clear_interrupt()


# ------------------------------------------------------------------ tiny models (tests/kit/tiny.py)
# Session scope; each builds once per machine (cached under tests/.tiny_models/, keyed by config + versions).
@pytest.fixture(scope="session")
def tiny_cogvideox():
    """Path of a tiny diffusers CogVideoXImageToVideoPipeline folder."""
    from kit.tiny import tiny_cogvideox_dir

    return tiny_cogvideox_dir()


@pytest.fixture(scope="session")
def tiny_cogvideox_files():
    """dict(transformer=, vae=, text_encoder=, tokenizer=, root=) single safetensors files (ComfyUI layout)."""
    from kit.tiny import tiny_cogvideox_files as build

    return build()


@pytest.fixture(scope="session")
def tiny_svd():
    """Path of a tiny diffusers StableVideoDiffusionPipeline folder."""
    from kit.tiny import tiny_svd_dir

    return tiny_svd_dir()


@pytest.fixture(scope="session")
def tiny_svd_files():
    """dict(clip_vision=, root=): the tiny SVD's CLIP vision encoder as a single file in <root>/clip_vision/."""
    from kit.tiny import tiny_svd_files as build

    return build()


@pytest.fixture(scope="session")
def tiny_sam2():
    """(yaml_path, weights_safetensors_path) of a tiny random SAM2.1 Hiera (128 px input)."""
    pytest.importorskip("sam2")
    from kit.tiny import tiny_sam2 as build

    return build()


@pytest.fixture(scope="session")
def tiny_wan():
    """Path of a tiny diffusers WanImageToVideoPipeline folder, Wan2.2 A14B layout (transformer + transformer_2,
    boundary_ratio 0.9, no image encoder)."""
    from kit.tiny import tiny_wan_dir

    return tiny_wan_dir(variant="2.2")


@pytest.fixture(scope="session")
def tiny_wan21():
    """Path of a tiny Wan2.1-I2V diffusers folder (one transformer with the CLIP image branch + CLIPVisionModel)."""
    from kit.tiny import tiny_wan_dir

    return tiny_wan_dir(variant="2.1")


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    """A ComfyUI-style models root with every tiny model (point --models-dir / runtime.set_models_root here).

    Session-wide private copy made of hard links into the cache (kit.tiny.tiny_models_root documents the layout);
    a test that adds files should build its own with kit.tiny.models_root(tmp_path).
    """
    from kit.tiny import models_root

    return models_root(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def push_clips(tmp_path_factory):
    """A sandbox-format dataset folder of two 32x32, 9-frame push clips (seeds 0, 1); tests only read it."""
    from interplay.models.sandbox.dataset import write_clip
    from interplay.models.sandbox.presets import generate_scene

    root = tmp_path_factory.mktemp("push_clips")
    for s in range(2):
        write_clip(generate_scene("push", seed=s, size=(32, 32), frames=9), root / f"clip{s:03d}")
    return root
