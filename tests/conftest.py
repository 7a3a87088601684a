"""Shared fixtures. Tiny-model builders live in tests/kit/ (importable as `kit`)."""
import os

import pytest

os.environ.setdefault("INTERPLAY_QUIET", "1")  # no terminal bars in test logs


@pytest.fixture(autouse=True)
def _fresh_runtime(tmp_path, monkeypatch):
    """Each test starts with standalone runtime state: no models root, output under tmp_path."""
    from interplay.models import runtime

    monkeypatch.delenv("INTERPLAY_MODELS_DIR", raising=False)
    runtime.set_models_root(None)
    runtime.set_output_directory(tmp_path / "output")
    runtime.clear_interrupt()
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)
    runtime.clear_interrupt()
