"""PAM motion branch: the released-layout folder loads by name with the block count read from its keys, DaS and
plain CogVideoX are told apart, zero init leaves the backbone bit-identical, a disabled condition is exactly zero
latents, the copy-block order equals a hand-written forward of the released code's order, CFG rows share the
conditions, the VAE runs once per signal, and the pack's branch file round-trips."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from interplay.models.backbones import cogvideox as cog
from interplay.models.control import pam as P, registry
from interplay.models.control.base import BoundControl, ControlSignal
from interplay.models.sampling import cogvideox as S
from kit import tiny

F, H, W = 9, 32, 32


@pytest.fixture(scope="module")
def released():
    return tiny.tiny_pam_released_dir()


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def pam(released):
    return P.load_branch(released, dtype=torch.float32, device="cpu")


def _inputs(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 8, 8, 8, generator=g), torch.tensor([600] * b), torch.randn(b, 7, 32, generator=g))


def _videos(seed=1, slots=P.RELEASED_USED):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.rand(F, H, W, 3, generator=g) for s in slots}


def _fwd(bb, x, t, e, branch=None, signal=None, weight=1.0, **kw):
    atts = [] if branch is None else registry.attachments([BoundControl(branch, signal, weight)], bb)
    with torch.no_grad():
        return cog.forward(bb, x, t, e, attachments=atts, **kw)


# ----------------------------------------------------------------------------------- the released layout
def test_released_folder_loads_with_no_missing_or_unexpected_keys(released, tiny_cogvideox):
    conf = json.loads((released / "config.json").read_text())
    assert conf["_class_name"] == "CogVideoXTransformer3DModelTracking" and "num_tracking_blocks" not in conf
    index = json.loads((released / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1  # diffusers' sharded writer, as the release

    found = P.inspect_weights(released)
    assert found.layout == "pam" and found.config["num_blocks"] == tiny.PAM_BLOCKS  # read from the keys
    assert "2 copied blocks of 2" in found.message and "[32, 160]" in found.message
    assert registry.detect_path(released) == "pam"

    branch, tr, _ = P.load_released(released, dtype=torch.float32, device="cpu", with_transformer=True)
    keys = set(index["weight_map"])
    got = {f"{k}": v for k, v in branch.module.state_dict().items()} | tr.state_dict()
    assert set(got) == keys  # every key of the folder lands, nothing is left over or missing
    want, _ = tiny.new_pam_released_state(0)  # what the kit put in (independent of the pack's reader)
    assert all(torch.equal(got[k], want[k]) for k in keys)
    assert branch.config["num_blocks"] == 2 and branch.kind == "pam" and branch.source == str(released)
    # the main weights ARE the plain tiny CogVideoX transformer
    from diffusers import CogVideoXTransformer3DModel

    plain = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox / "transformer").state_dict()
    assert all(torch.equal(tr.state_dict()[k], v) for k, v in plain.items())


def test_branch_only_load_reads_no_main_tensor(released, monkeypatch):
    from interplay.models import weights

    asked = []
    real = weights.read_safetensors

    def spy(path, what="weights", keys=None, convert=None):
        asked.append(None if keys is None else set(keys))
        return real(path, what, keys=keys, convert=convert)

    monkeypatch.setattr(weights, "read_safetensors", spy)
    P.load_branch(released)
    assert asked and all(ks is not None and all(k.startswith(P.BRANCH_PREFIXES) for k in ks) for ks in asked)


def test_backbone_from_the_released_folder_main_weights(released, tiny_cogvideox, bb):
    _, tr, _ = P.load_released(released, dtype=torch.float32, device="cpu", with_transformer=True)
    bb2 = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu", transformer=tr)
    assert bb2.denoiser is tr
    x, t, e = _inputs()
    assert torch.equal(_fwd(bb2, x, t, e), _fwd(bb, x, t, e))


def _variant_folder(tmp_path, released, name, edit):
    """A copy of the released folder as one file with ``edit(sd)`` applied (class name kept)."""
    sd = {}
    for f in sorted(released.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    sd = edit(sd)
    out = tmp_path / name
    out.mkdir()
    save_file(sd, str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text((released / "config.json").read_text())
    return out


def test_das_and_plain_cogvideox_are_told_apart(tmp_path, released, tiny_cogvideox):
    def das(sd):
        sd["initial_combine_linear.weight"] = torch.zeros(32, 32)  # DiffusionAsShader: one tracking video
        return sd

    d = _variant_folder(tmp_path, released, "das", das)
    assert P.inspect_weights(d).layout == "das"
    with pytest.raises(ValueError, match=r"DiffusionAsShader.*\[32, 32\].*\[32, 160\].*not supported"):
        P.load_branch(d)
    plain = _variant_folder(tmp_path, released, "plain",
                            lambda sd: {k: v for k, v in sd.items() if not k.startswith(P.BRANCH_PREFIXES)})
    assert P.inspect_weights(plain).layout == "plain"
    with pytest.raises(ValueError, match="plain CogVideoX transformer"):
        P.load_branch(plain)
    assert P.inspect_weights(tiny_cogvideox / "transformer").layout == "plain"
    # a pipeline folder holding the released transformer in transformer/ is found too
    pipe = tmp_path / "pipe"
    (pipe / "transformer").mkdir(parents=True)
    for f in released.iterdir():
        (pipe / "transformer" / f.name).symlink_to(f)
    assert P.released_folder(pipe) == pipe / "transformer" and P.inspect_weights(pipe).layout == "pam"


def test_shard_index_never_leaves_the_folder(tmp_path, released):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((released / "config.json").read_text())
    (bad / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="outside the folder"):
        P.inspect_weights(bad)


# ----------------------------------------------------------------------------------------- equivalences
def test_zero_init_branch_leaves_the_backbone_bit_identical(bb):
    br = P.new_branch(bb.denoiser, num_blocks=2)
    m = br.module
    assert all(float(p.detach().abs().max()) == 0 for p in [*m.combine_linears.parameters(),
                                                   *m.initial_combine_linear.parameters()])
    sd, main = m.state_dict(), bb.denoiser.state_dict()
    assert all(torch.equal(v, main["transformer_blocks." + k[len("transformer_blocks_copy."):]])
               for k, v in sd.items() if k.startswith("transformer_blocks_copy."))
    x, t, e = _inputs()
    sig = P.hoi_signal(_videos())
    assert torch.equal(_fwd(bb, x, t, e, br, sig), _fwd(bb, x, t, e))
    img = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(2))
    pos, neg = cog.encode_prompt(bb, ["a hand grasps a can"]), cog.encode_prompt(bb, [""])
    kw = dict(num_frames=F, steps=3, cfg=6.0, dynamic_cfg=True, seed=42, scheduler="dpm")
    plain = S.sample_cogvideox(bb, img, pos, neg, **kw)
    assert torch.equal(S.sample_cogvideox(bb, img, pos, neg, controls=[sig], branch=br, **kw), plain)


def test_disabled_condition_is_exactly_zero_latents(bb, pam):
    x, t, e = _inputs()
    vids = _videos(slots=("depth", "seg", "hand"))
    sig = P.hoi_signal({"depth": vids["depth"], "seg": vids["seg"]})  # hand disabled
    maps, firsts = P.encode_conditions(bb, {s: (v[None] if v is not None else None)
                                            for s, v in P.unpack_signal(sig).items()},
                                       generator=torch.Generator().manual_seed(42))
    assert [float(maps[0, k].abs().max()) == 0 for k in range(5)] == [True, True, False, False, True]
    assert torch.equal(firsts[:, 4], torch.zeros_like(firsts[:, 4]))
    lat = P.condition_input(bb, maps, firsts)
    ref = cog.forward(bb, x, t, e, attachments=[P.PAMAttachment.from_latents(pam.module, lat)])
    assert torch.equal(_fwd(bb, x, t, e, pam, sig), ref)
    # the disabled slot's pixels are ignored: a signal carrying hand pixels marked disabled is the same
    full = P.hoi_signal(vids)
    off = full.replace(meta={**full.meta, "enabled": [False, False, True, True, False]})
    assert torch.equal(_fwd(bb, x, t, e, pam, off), ref)
    # and zero latents are NOT "no branch": they still pass the patch embedding (bias + positions)
    assert (_fwd(bb, x, t, e, pam, full) - ref).abs().max() > 1e-4
    assert (ref - _fwd(bb, x, t, e)).abs().max() > 1e-4


def _reference_forward(bb, sd, x, t, e, cond_in, weight=1.0, projected_feeds_next=True):
    """The released CogVideoXTransformer3DModelCombination.forward, by hand, from the released state dict."""
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    tr = bb.denoiser
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks_copy."))
    copies = []
    for i in range(n):
        blk = CogVideoXBlock(dim=32, num_attention_heads=2, attention_head_dim=16, time_embed_dim=16,
                             attention_bias=True)
        blk.load_state_dict({k[len(f"transformer_blocks_copy.{i}."):]: v for k, v in sd.items()
                             if k.startswith(f"transformer_blocks_copy.{i}.")})
        copies.append(blk.eval())

    def lin(name, v):
        return v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    rot = cog.rotary_embeddings(tr.config, x.shape[1], x.shape[3], x.shape[4])
    emb = tr.time_embedding(tr.time_proj(t))
    hs = tr.patch_embed(e, x)
    n_text = e.shape[1]
    enc, hs = hs[:, :n_text], hs[:, n_text:]
    toks = [tr.patch_embed(e, cond_in[:, s].expand(x.shape[0], *cond_in.shape[2:]))[:, n_text:] for s in range(5)]
    c = lin("initial_combine_linear", hs.repeat(1, 1, 5) + torch.cat(toks, dim=2))
    for i, blk in enumerate(tr.transformer_blocks):
        hs, enc = blk(hs, enc, emb, rot)
        if i < n:
            out, _ = copies[i](c, enc, emb, rot)
            proj = lin(f"combine_linears.{i}", out)
            hs = hs + weight * proj
            c = proj if projected_feeds_next else out
    out = tr.proj_out(tr.norm_out(tr.norm_final(hs), temb=emb))
    b, f = x.shape[:2]
    return out.reshape(b, f, 4, 4, -1, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)


def test_copy_block_order_matches_the_released_forward(bb, pam):
    sd, _ = tiny.new_pam_released_state(0)
    x, t, e = _inputs(3)
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(1, 5, 3, 8, 8, 8, generator=g)
    lat[:, :2] = 0  # tracking and normal: zero as released
    with torch.no_grad():
        got = cog.forward(bb, x, t, e, attachments=[P.PAMAttachment.from_latents(pam.module, lat, weight=0.7)])
        ref = _reference_forward(bb, sd, x, t, e, lat, weight=0.7)
        other = _reference_forward(bb, sd, x, t, e, lat, weight=0.7, projected_feeds_next=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (got - other).abs().max() > 1e-3  # the order is visible: the other reading gives another output


def test_slot_order_is_the_released_one(bb, pam):
    """Moving the same video from the depth slot to the seg slot changes the output (the slots differ)."""
    x, t, e = _inputs()
    v = _videos(slots=("depth",))["depth"]
    a = _fwd(bb, x, t, e, pam, P.hoi_signal({"depth": v}))
    b = _fwd(bb, x, t, e, pam, P.hoi_signal({"seg": v}))
    assert (a - b).abs().max() > 1e-4
    assert P.SLOTS == ("tracking", "normal", "depth", "seg", "hand")


def test_cfg_rows_share_the_conditions_and_no_control_rows_drop_them(bb, pam):
    x, t, e = _inputs(5, b=1)
    sig = P.hoi_signal(_videos())
    e2 = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(9))
    empty = P.hoi_signal({"depth": torch.zeros(F, H, W, 3)}).replace(
        meta={"slots": list(P.SLOTS), "enabled": [False] * 5, "seed": 42})
    with torch.no_grad():
        rows = {"uncond": slice(0, 1), "cond": slice(1, 2), "no_control": slice(2, 3)}
        att = registry.attachments([BoundControl(pam, sig, 1.0)], bb)
        out = cog.forward(bb, torch.cat([x] * 3), t.expand(3), torch.cat([e2, e, e]), attachments=att, rows=rows)
    torch.testing.assert_close(out[0:1], _fwd(bb, x, t, e2, pam, sig), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:2], _fwd(bb, x, t, e, pam, sig), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2:3], _fwd(bb, x, t, e, pam, empty), rtol=1e-5, atol=1e-5)


def test_weight_scales_the_residual_and_the_step_range_gates_it(bb, pam, monkeypatch):
    x, t, e = _inputs()
    sd, _ = tiny.new_pam_released_state(0)
    sig = P.hoi_signal(_videos())
    assert torch.equal(_fwd(bb, x, t, e, pam, sig, weight=0.0), _fwd(bb, x, t, e))
    att = registry.attachments([BoundControl(pam, sig, 0.5, 0.5, 1.0)], bb)[0]
    assert att.active((1, 4)) == [] and len(att.active((2, 4))) == 1
    with torch.no_grad():
        assert torch.equal(cog.forward(bb, x, t, e, attachments=[att], step=(1, 4)), _fwd(bb, x, t, e))
        got = cog.forward(bb, x, t, e, attachments=[att], step=(2, 4))
        lat = att.entries[0].latents
        torch.testing.assert_close(got, _reference_forward(bb, sd, x, t, e, lat, weight=0.5), rtol=1e-5, atol=1e-5)


def test_the_vae_encodes_each_condition_once_per_signal(bb, pam, monkeypatch):
    calls = []
    real = cog.encode_frames
    monkeypatch.setattr(cog, "encode_frames", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    img = torch.rand(1, H, W, 3)
    pos = cog.encode_prompt(bb, ["a hand"])
    sig = P.hoi_signal(_videos())
    S.sample_cogvideox(bb, img, pos, pos, controls=[sig], branch=pam, num_frames=F, steps=4, cfg=6.0, seed=1)
    # the image once, then per enabled condition its video and its first frame, whatever the step count
    assert [tuple(c[:2]) for c in calls] == [(1, 1)] + [(1, F), (1, 1)] * 3


def test_frame_mismatch_is_named(bb, pam):
    sig = P.hoi_signal({"depth": torch.rand(17, H, W, 3)})
    img = torch.rand(1, H, W, 3)
    pos = cog.encode_prompt(bb, ["a hand"])
    with pytest.raises(ValueError, match="control is 17 frames.*generation is 9 frames"):
        S.sample_cogvideox(bb, img, pos, None, controls=[sig], branch=pam, num_frames=F, steps=1, cfg=1.0)
    x, t, e = _inputs()
    with pytest.raises(ValueError, match="the conditions are 17 frames.*generation is 3 latent frames"):
        _fwd(bb, x, t, e, pam, sig)


# ----------------------------------------------------------------------------------- signal and files
def test_hoi_signal_packs_slots_in_order():
    class HOIConditions:  # the condition side's dataclass, by attribute names
        def __init__(self, **kw):
            self.__dict__.update(kw)

    v = _videos()
    sig = P.hoi_signal(HOIConditions(depth=v["depth"], seg=v["seg"], hand=v["hand"], tracking=None, normal=None,
                                     fps=15.0), weight=0.8, start=0.1, end=0.9)
    assert sig.kind == "hoi" and sig.video.shape == (F, H, W, 15) and (sig.weight, sig.start, sig.end) == (0.8, 0.1, 0.9)
    assert sig.meta == {"slots": list(P.SLOTS), "enabled": [False, False, True, True, True], "seed": 42, "fps": 15.0}
    assert torch.equal(sig.video[..., 6:9], v["depth"]) and torch.equal(sig.video[..., 12:15], v["hand"])
    assert float(sig.video[..., :6].abs().max()) == 0
    assert P.unpack_signal(sig)["seg"].equal(v["seg"]) and P.unpack_signal(sig)["normal"] is None
    with pytest.raises(ValueError, match="'seg' is 17 frames of 32x32 but 'depth' is 9 frames"):
        P.hoi_signal({"depth": v["depth"], "seg": torch.rand(17, H, W, 3)})
    with pytest.raises(ValueError, match=r"expected IMAGE range 0..1 \(a \[-1, 1\] video"):
        P.hoi_signal({"depth": v["depth"] * 2 - 1})
    with pytest.raises(ValueError, match="every slot is empty"):
        P.hoi_signal({"depth": None})
    with pytest.raises(ValueError, match="unknown slot"):
        P.hoi_signal({"keypoints": v["hand"]})
    with pytest.raises(ValueError, match="not a PAM condition stack"):
        P.unpack_signal(ControlSignal(torch.zeros(F, H, W, 3), "hoi"))


def test_pack_file_roundtrip_and_header_checks(tmp_path, pam, bb):
    path = P.save_branch(pam, tmp_path / "pam.safetensors")
    from interplay.models.weights import read_header

    shapes, meta = read_header(path)
    assert set(shapes) == set(pam.module.state_dict()) and all(k.startswith(P.BRANCH_PREFIXES) for k in shapes)
    assert meta["kind"] == "pam" and json.loads(meta["interplay_config"])["num_blocks"] == 2
    assert registry.detect_path(path) == "pam"
    back = registry.load(path, dtype=torch.float32, device="cpu")
    assert all(torch.equal(v, pam.module.state_dict()[k]) for k, v in back.module.state_dict().items())
    assert not any(p.requires_grad for p in back.module.parameters())
    x, t, e = _inputs()
    sig = P.hoi_signal(_videos())
    assert torch.equal(_fwd(bb, x, t, e, back, sig), _fwd(bb, x, t, e, pam, sig))
    # a header that disagrees with its config is refused before any tensor is read
    sd = load_file(str(path))
    cfg = {**json.loads(meta["interplay_config"]), "num_blocks": 3}
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata={**meta, "interplay_config": json.dumps(cfg)})
    with pytest.raises(ValueError, match=r"3 blocks.*missing 26 keys, e.g. \['combine_linears.2.bias'"):
        P.load_branch(tmp_path / "bad.safetensors")
    sd["combine_linears.0.weight"] = torch.zeros(32, 16)
    save_file(sd, str(tmp_path / "bad2.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"combine_linears.0.weight: \(32, 16\) -> \(32, 32\)"):
        P.load_branch(tmp_path / "bad2.safetensors")


def test_new_branch_shapes_follow_the_release_at_5b_sizes():
    """State-dict names and shapes of a 12-block branch at CogVideoX-5B sizes (meta device: nothing allocated)."""
    with torch.device("meta"):
        m = P.PAMBranch()
    sd = m.state_dict()
    assert m.config.num_blocks == 12 and sd["initial_combine_linear.weight"].shape == (3072, 15360)
    assert sd["combine_linears.11.weight"].shape == (3072, 3072) and "transformer_blocks_copy.12.norm1.linear.weight" \
        not in sd
    n = sum(v.numel() for v in sd.values())
    assert n == 1_746_843_648  # the spec's count of the trainable parameters (copies 0-11 + both projections)
