"""`interplay` console entry: usage, unknown commands, and `run` dispatched to nodes.graph.cli_main."""
import json
import subprocess
import sys

from interplay.nodes import cli


def test_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in out
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_run_dispatches_to_graph_runner(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}}))
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out)]) == 2  # a core node: validation error
    err = capsys.readouterr().err
    assert "CheckpointLoaderSimple" in err and "does not exist" in err
    assert not out.exists()


def test_console_script_runs_in_a_fresh_process(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{ not json")
    proc = subprocess.run([sys.executable, "-c", "import sys; from interplay.nodes.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "run", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr
