"""SandboxDataset(hoi=...): hand-object clips also yield PAM's condition videos (hoi_depth, hoi_seg, hoi_hand),
rendered once per clip by the one renderer; items of every other clip stay bit-identical."""
import json

import numpy as np
import pytest
import torch

from interplay.models.conditions.hoi_render import ADE20K, INFERNO_U8
from interplay.models.sandbox.dataset import (HOI_KEYS, SandboxDataset, check_hoi, collate, read_clip,
                                              render_clip_conditions, write_clip)
from interplay.models.sandbox.presets import generate_scene

S, F = 32, 9


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two hoi clips and one clip of every other preset, in one folder."""
    root = tmp_path_factory.mktemp("mixed")
    for i, preset in enumerate(("push", "pusher", "multi", "camera")):
        write_clip(generate_scene(preset, seed=i, size=(S, S), frames=F), root / f"a_{preset}")
    for s in range(2):
        write_clip(generate_scene("hoi", seed=s, size=(S, S), frames=F), root / f"b_hoi{s}")
    return root


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_other_presets_are_bit_identical_with_hoi_on(mixed):
    off, on = SandboxDataset(mixed), SandboxDataset(mixed, hoi=True)
    names = [p.name for p in off.clips]
    assert names == ["a_camera", "a_multi", "a_push", "a_pusher", "b_hoi0", "b_hoi1"]
    for i, name in enumerate(names):
        a, b = off[i], on[i]
        if name.startswith("a_"):
            assert _same(a, b), name
            assert not set(HOI_KEYS) & set(b)
        else:  # the same item plus the three videos
            assert not set(HOI_KEYS) & set(a)
            assert _same(a, {k: v for k, v in b.items() if k not in HOI_KEYS})
            assert all(b[k].shape == (F, S, S, 3) and b[k].dtype == torch.float32 for k in HOI_KEYS)
    assert on.hoi_cache.renders == 2


def test_hoi_videos_are_the_renderers_encodings_of_the_clip(mixed):
    item = SandboxDataset(mixed, hoi=True)[4]
    clip = read_clip(mixed / "b_hoi0")
    seg = (item["hoi_seg"] * 255).round().to(torch.uint8).reshape(-1, 3)
    colours = {tuple(c) for c in seg.unique(dim=0).tolist()}
    hand, obj = (92, 0, 255), tuple(int(v) for v in ADE20K[1])  # DexYCB coding: hand 255, the object label 1
    assert obj == (180, 120, 120) and colours == {(0, 0, 0), hand, obj}
    is_hand = (item["hoi_seg"] * 255).round().eq(torch.tensor(hand, dtype=torch.float32)).all(-1).numpy()
    # the capsule proxy covers the sandbox's own (independently rasterised) hand: 0.66..0.84 per frame here
    inter, union = (is_hand & clip.pusher_mask).sum((1, 2)), (is_hand | clip.pusher_mask).sum((1, 2))
    assert (inter / union).min() > 0.6
    fg = item["hoi_seg"].amax(-1) > 0
    assert float(item["hoi_depth"][~fg].abs().max()) == 0  # depth background black, as PAM's dataloader
    depth = (item["hoi_depth"][fg] * 255).round().to(torch.uint8)
    table = {tuple(c) for c in INFERNO_U8.tolist()}
    assert {tuple(c) for c in depth.unique(dim=0).tolist()} <= table  # every foreground pixel an inferno colour
    assert float(item["hoi_hand"].amax()) > 0 and float(item["hoi_hand"][0].amax()) > 0  # keypoints drawn


def test_rendered_once_per_clip_and_at_the_item_size(mixed):
    ds = SandboxDataset(mixed, hoi=True, frames=5, size=(16, 24))
    a = ds[5]
    b = ds[5]
    assert ds.hoi_cache.renders == 1 and all(torch.equal(a[k], b[k]) for k in HOI_KEYS)
    a[HOI_KEYS[0]].zero_()  # items are copies: the cache is never changed through them
    assert float(ds[5][HOI_KEYS[0]].amax()) > 0 and ds.hoi_cache.renders == 1
    assert a["hoi_seg"].shape == (5, 16, 24, 3) == a["frames"].shape
    ref = render_clip_conditions(read_clip(mixed / "b_hoi1", max_frames=5), (16, 24))
    assert torch.equal(b["hoi_seg"], (ref.seg * 255).round() / 255)  # nearest-resized labels, exact colours
    batch = collate([ds[4], ds[5]])
    assert batch["hoi_hand"].shape == (2, 5, 16, 24, 3)


def test_cache_budget_and_options_are_checked(mixed, tmp_path):
    ds = SandboxDataset(mixed, hoi={"style": "oakink2"}, hoi_cache_mb=0)
    ds[4], ds[4]
    assert ds.hoi_cache.renders == 2 and ds.hoi_cache.bytes == 0  # nothing kept past the budget
    colours = {tuple(c) for c in (ds[4]["hoi_seg"] * 255).round().reshape(-1, 3).unique(dim=0).tolist()}
    assert (61, 230, 250) in colours  # OakInk2 coding: hands ADE20K[20]
    with pytest.raises(ValueError, match=r"SandboxDataset: 'hoi' has unknown render option\(s\) colour"):
        SandboxDataset(mixed, hoi={"colour": 1})
    with pytest.raises(ValueError, match="'hoi' must be true, false or an object"):
        check_hoi("yes")
    # a hand-object clip without a camera is skipped by name, like any malformed clip
    bad = tmp_path / "bad"
    write_clip(generate_scene("hoi", seed=0, size=(S, S), frames=F), bad / "c0")
    side = json.loads((bad / "c0" / "clip.json").read_text())
    side.pop("camera")
    (bad / "c0" / "clip.json").write_text(json.dumps(side))
    write_clip(generate_scene("hoi", seed=1, size=(S, S), frames=F), bad / "c1")
    ds = SandboxDataset(bad, hoi=True)
    with pytest.warns(UserWarning, match=r"c0/clip.json: a hand-object clip needs 'camera'"):
        item = ds[0]
    assert item["name"] == "c1" and np.isclose(float(item["hoi_seg"].amax()), 1.0)
