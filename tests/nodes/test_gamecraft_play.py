"""The GameCraft play nodes: registration and tooltips; the session node's snapshot / restore / reset-to-sink /
drop on a tiny causal run, and its named errors."""
import json

import pytest
import torch
from kit import tiny

from interplay.models import runtime
from interplay.models.backbones import wan
from interplay.models.sessions import STORE, SessionError
from interplay.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from interplay.nodes import gamecraft_play as N

IDS = ("InterplayGameCraftSampler", "InterplayGameCraftSession", "InterplayGameCraftCameraEncoderLoader")


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_output_directory(None)


def test_nodes_are_registered_with_tooltips_and_descriptions():
    for nid in IDS:
        cls = NODE_CLASS_MAPPINGS[nid]
        assert NODE_DISPLAY_NAME_MAPPINGS[nid].endswith(" (Interplay)") and cls.CATEGORY.startswith("Interplay/")
        assert len(cls.DESCRIPTION) > 80
        for group in ("required", "optional"):
            for name, s in cls.INPUT_TYPES().get(group, {}).items():
                assert len(s) > 1 and s[1].get("tooltip"), (nid, name)
    assert N.InterplayGameCraftSampler.IS_CHANGED() != N.InterplayGameCraftSampler.IS_CHANGED()  # NaN: always runs


def _run(bb, session="new", **kw):
    args = dict(keys="W", instruction="", base_prompt="a street", num_blocks=1, width=32, height=32, seed=9,
                mode="causal", block_latent_frames=2, window_latent_frames=3) | kw
    return N.InterplayGameCraftSampler().play(bb, session, **args)["result"]


def test_session_node_snapshot_restore_reset_and_drop(tmp_path):
    runtime.set_output_directory(tmp_path)
    bb = wan.load_wan(tiny.tiny_wan_dir(variant="2.1-t2v"), dtype="fp32", device="cpu")
    _, _, sid, _, _ = _run(bb, num_blocks=2)
    node = N.InterplayGameCraftSession()
    _, info = node.run(sid, "snapshot", "branch_point")
    assert json.loads(info)["snapshot"] == "branch_point.safetensors"
    assert (tmp_path / "interplay_sessions" / "branch_point.safetensors").is_file()
    a = _run(bb, sid, keys="LEFT")[1]["samples"]
    rid, info = node.run("restored", "restore", "branch_point", backbone=bb)
    assert rid == "restored" and json.loads(info)["blocks"] == 2
    b = _run(bb, rid, keys="LEFT")[1]["samples"]
    assert torch.equal(a, b)
    _, info = node.run(sid, "reset_to_sink", "")
    assert json.loads(info)["cache"]["frames"] == [0]
    node.run(sid, "drop", "")
    with pytest.raises(SessionError, match="gone \\(dropped by the user\\)"):
        STORE.get(sid)
    with pytest.raises(SessionError, match="no session 'nope'"):
        node.run("nope", "info", "")
    with pytest.raises(ValueError, match="restore needs 'backbone'"):
        node.run("", "restore", "branch_point")
    with pytest.raises(ValueError, match="no snapshot missing.safetensors"):
        node.run("", "restore", "missing", backbone=bb)
    with pytest.raises(ValueError, match="'timesteps' must be numbers"):
        _run(bb, timesteps="1000,abc")
    with pytest.raises(ValueError, match="generates from an image"):
        i2v = wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")
        _run(i2v)
    STORE.drop("restored")
