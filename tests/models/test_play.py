"""GameCraft play sessions on tiny Wan models: a session continued over three calls equals one call of three blocks
(latents, streamed frames, camera path, with a random camera encoder attached); a restored snapshot generates the
next block bitwise as the original session does; reset-to-sink; the session store's bounds and errors."""
import pytest
import torch
from kit import tiny

from interplay.models import play as P
from interplay.models import runtime
from interplay.models import sessions as SS
from interplay.models.backbones import wan
from interplay.models.control import registry
from interplay.models.sampling.causal import CausalConfig

S = 32
CFG = CausalConfig(block_latent_frames=2, sink_latent_frames=1, window_latent_frames=3)


@pytest.fixture(scope="module")
def t2v():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.1-t2v"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def i2v():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def camera(t2v):
    br = registry.get("gamecraft_camera").new(t2v)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in br.module.parameters():  # the zero-initialised projection would make the camera a no-op
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return br


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_output_directory(None)


def test_three_calls_equal_one_call_of_three_blocks(t2v, camera):
    a = P.start_session(t2v, width=S, height=S, config=CFG, seed=11)
    parts = [P.play(a, t2v, keys=k, base_prompt="a street", branch=camera) for k in ("W", "W+LEFT", "D")]
    b = P.start_session(t2v, width=S, height=S, config=CFG, seed=11)
    one = P.play(b, t2v, num_blocks=3, keys="W, W+LEFT, D", base_prompt="a street", branch=camera)
    lat = torch.cat([p.latents for p in parts], 2)
    assert lat.shape == one.latents.shape == (1, 16, 6, 4, 4)
    assert torch.equal(lat, one.latents)
    frames = torch.cat([p.frames for p in parts])
    assert frames.shape == (1 + 4 * 5, S, S, 3) and [p.frames.shape[0] for p in parts] == [5, 8, 8]
    assert torch.equal(frames, one.frames)
    assert torch.equal(a.c2w, b.c2w) and a.c2w.shape == (21, 4, 4)
    # the streamed frames are the frames of decoding the whole latent video at once
    torch.testing.assert_close(frames, wan.decode_latents(t2v, one.latents)[0], rtol=0, atol=1e-5)
    # the encoder is not a no-op here: without it the video differs
    c = P.start_session(t2v, width=S, height=S, config=CFG, seed=11)
    plain = P.play(c, t2v, num_blocks=3, keys="W, W+LEFT, D", base_prompt="a street")
    assert not torch.equal(plain.latents, one.latents)
    assert a.rollout.cache.frames == [0, 3, 4, 5]  # sink + window
    # causality: other keys for block 2 leave blocks 0 and 1 bit-identical and change block 2
    d = P.start_session(t2v, width=S, height=S, config=CFG, seed=11)
    other = P.play(d, t2v, num_blocks=3, keys="W, W+LEFT, A", base_prompt="a street", branch=camera)
    assert torch.equal(other.latents[:, :, :4], one.latents[:, :, :4])
    assert not torch.equal(other.latents[:, :, 4:], one.latents[:, :, 4:])


def test_restored_snapshot_reproduces_the_next_block_bitwise(i2v, tmp_path):
    runtime.set_output_directory(tmp_path)
    img = torch.rand(1, S, S, 3, generator=torch.Generator().manual_seed(3))
    s = P.start_session(i2v, width=S, height=S, config=CFG, image=img, seed=5)
    P.play(s, i2v, num_blocks=2, keys="W*2", base_prompt="a room", instruction="a door opens")
    held = list(s.rollout.cache.frames)
    path = P.save_snapshot(s, P.snapshot_path("run1"))
    assert path == tmp_path / P.SNAPSHOT_FOLDER / "run1.safetensors"
    nxt = P.play(s, i2v, keys="RIGHT", instruction="a cat walks in")  # a switch: recache, then the block
    r = P.load_snapshot(path, i2v, sid="restored")
    assert r.blocks_done == 2 and r.rollout.cache.frames == held == [0, 1, 2, 3]
    again = P.play(r, i2v, keys="RIGHT", instruction="a cat walks in")
    assert torch.equal(again.latents, nxt.latents) and torch.equal(again.frames, nxt.frames)
    assert torch.equal(r.c2w, s.c2w)
    assert again.records[0]["recache"] == "last_block" and again.records[0]["experts"] == \
        ["high_noise", "high_noise", "low_noise", "low_noise"]


def test_snapshot_stays_in_the_output_folder(tmp_path):
    runtime.set_output_directory(tmp_path / "out")
    with pytest.raises(runtime.PathRefused, match="outside"):
        P.snapshot_path(str(tmp_path / "elsewhere" / "x.safetensors"))
    with pytest.raises(runtime.PathRefused, match="outside"):
        P.snapshot_path("../../x")
    with pytest.raises(ValueError, match="'snapshot' is empty"):
        P.snapshot_path(" ")


def test_reset_to_sink_keeps_only_the_sink(t2v):
    s = P.start_session(t2v, width=S, height=S, config=CFG, seed=1)
    P.play(s, t2v, num_blocks=3, base_prompt="p")
    s.rollout.reset_to_sink()
    assert s.rollout.cache.frames == [0] and sorted(s.rollout.held) == [0]
    out = P.play(s, t2v, base_prompt="p")
    assert out.latents.shape[2] == 2 and s.rollout.cache.frames == [0, 6, 7]


class _Obj:
    def __init__(self, n):
        self.n = n

    def nbytes(self):
        return self.n


def test_store_bounds_and_named_errors():
    now = [0.0]
    st = SS.SessionStore(max_sessions=2, max_bytes=100, ttl_seconds=60, clock=lambda: now[0])
    st.put("a", _Obj(10))
    st.put("b", _Obj(10))
    st.put("c", _Obj(10))  # three > two: the least recently used goes
    assert st.ids() == ["b", "c"]
    with pytest.raises(SS.SessionError, match="'a' is gone .*more than 2 sessions"):
        st.get("a")
    with pytest.raises(SS.SessionError, match="no session 'zz'.*set session to 'new'"):
        st.get("zz")
    st.put("d", _Obj(95))  # 10 + 95 > 100 bytes: c goes, d (the one just put) stays
    assert st.ids() == ["d"] and st.nbytes() == 95
    now[0] = 61.0
    with pytest.raises(SS.SessionError, match="expired after 1 min idle"):
        st.get("d")
    assert st.ids() == []
