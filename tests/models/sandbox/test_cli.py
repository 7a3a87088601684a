import json

import pytest

from interplay.models.sandbox import cli
from interplay.models.sandbox.dataset import SandboxDataset, read_clip
from interplay.models.sandbox.presets import generate_scene


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_regardless_of_workers(tmp_path):
    args = dict(preset="push", n=5, size=(24, 32), frames=3, seed=7, progress=False)
    cli.make(tmp_path / "one", workers=1, **args)
    cli.make(tmp_path / "two", workers=2, **args)
    a, b = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len(a) == 5 * (3 + 2) + 1 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    other = cli.make(tmp_path / "other", workers=1, **dict(args, seed=8))
    assert other["written"] == 5 and _tree(tmp_path / "other")["clip_000000/data.npz"] != a["clip_000000/data.npz"]


def test_clip_i_is_reproducible_from_its_stored_seed(tmp_path):
    cli.make(tmp_path, preset="multi", n=3, size=(16, 16), frames=2, seed=1, progress=False)
    c = read_clip(tmp_path / "clip_000002")
    assert c.seed == cli.clip_seed(1, 2)
    again = generate_scene("multi", c.seed, (16, 16), frames=2)
    assert again.frames.tobytes() == c.frames.tobytes()


def test_main_via_interplay_command_and_resume(tmp_path, capsys):
    from interplay.nodes.cli import main as interplay_main

    out = tmp_path / "ds"
    argv = ["sandbox", "make", "--preset", "pusher", "--n", "3", "--size", "40x24", "--frames", "4", "--seed", "0",
            "--workers", "1", "--quiet", str(out)]
    assert interplay_main(argv) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    index = json.loads((out / "dataset.json").read_text())
    assert index["clips"] == ["clip_000000", "clip_000001", "clip_000002"] and index["height"] == 24
    ds = SandboxDataset(out)
    assert len(ds) == 3 and ds[0]["frames"].shape == (4, 24, 40, 3)
    assert interplay_main(argv) == 0  # finished clips are kept
    assert "wrote 0 clips" in capsys.readouterr().out
    (out / "clip_000001" / "clip.json").write_text("{")
    assert cli.main(["check", str(out)]) == 1
    err = capsys.readouterr().err
    assert "clip_000001/clip.json" in err


def test_bad_size_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["make", "--size", "64by64", str(tmp_path)])
    assert cli.parse_size("720x480") == (480, 720)
