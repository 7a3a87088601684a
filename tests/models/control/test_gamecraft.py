import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from interplay.models import weights
from interplay.models.conditions.camera import Motion, camera_from_timeline
from interplay.models.conditions.keys import parse_timeline
from interplay.models.control import gamecraft as G
from interplay.models.control.base import ControlBranch
from interplay.models.control.kinemask import _compress_time


def _randomise(enc, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return enc


def _gamecraft1_compress_time(x, num_frames):
    """GameCraft-1's CameraNet.compress_time rule, written from its description: [B*F,C,h,w], avg_pool1d(2, 2)
    over time with frame 0 kept apart for odd counts, and 34/66 frames taken as two clips with a first frame
    each."""
    bf, c, h, w = x.shape
    b = bf // num_frames
    t = x.view(b, num_frames, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, num_frames)

    def one(seg):
        if seg.shape[-1] % 2 == 1:
            rest = seg[..., 1:]
            rest = F.avg_pool1d(rest, 2, 2) if rest.shape[-1] else rest
            return torch.cat([seg[..., :1], rest], -1)
        return F.avg_pool1d(seg, 2, 2)

    if num_frames in (34, 66):
        half = num_frames // 2
        t = torch.cat([one(t[..., :half]), one(t[..., half:])], -1)
    else:
        t = one(t)
    f2 = t.shape[-1]
    return t.view(b, h, w, c, f2).permute(0, 4, 3, 1, 2).reshape(b * f2, c, h, w)


def test_compress_time_on_a_hand_made_tensor():
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 2, 1, 1).contiguous()  # frame i = i
    assert _compress_time(x, 5)[:, 0].flatten().tolist() == [0.0, 1.5, 3.5]  # frame 0 alone, then pairs
    y = torch.arange(8, dtype=torch.float32).view(2, 4, 1, 1)                 # batch 2 x 4 frames, values 0..7
    assert _compress_time(y.reshape(8, 1, 1, 1), 4).flatten().tolist() == [0.5, 2.5, 4.5, 6.5]
    assert _compress_time(x[:1], 1).flatten().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("frames", [1, 2, 5, 9, 12, 13, 21, 33])
def test_kinemask_compress_time_equals_gamecraft1_rule(frames):
    x = torch.randn(2 * frames, 3, 2, 2, generator=torch.Generator().manual_seed(frames))
    assert torch.equal(_compress_time(x, frames), _gamecraft1_compress_time(x, frames))


def test_the_one_difference_gamecraft1_two_clip_counts():
    x = torch.arange(34, dtype=torch.float32).view(34, 1, 1, 1)
    ours = _compress_time(x, 34).flatten()          # one clip: 17 pair means
    gc1 = _gamecraft1_compress_time(x, 34).flatten()  # two clips of 17: 9 + 9 frames
    assert ours.tolist() == [0.5 + 2 * i for i in range(17)]
    assert gc1.tolist()[:2] == [0.0, 1.5] and gc1.tolist()[9:11] == [17.0, 18.5] and len(gc1) == 18


def test_output_shape_for_4n_plus_1_frames_and_blocks():
    enc = G.GameCraftCameraEncoder.from_backbone_config(32, patch_size=(1, 2, 2))
    x = torch.randn(2, 13, 6, 32, 48)
    out = enc(x)
    assert out.shape == (2, 32, 4, 2, 3)      # 13 = 4*3+1 -> 4 latent frames; 32x48 / (8*2) -> 2x3 patches
    assert enc.tokens(x).shape == (2, 4 * 2 * 3, 32)
    assert enc(torch.randn(1, 12, 6, 32, 48)).shape == (1, 32, 3, 2, 3)  # a later block: 12 -> 3
    assert [enc.latent_frames(f) for f in (1, 9, 12, 45, 93)] == [1, 3, 3, 12, 24]
    assert enc.encode(x).shape == (2, 16, 4, 4, 6)
    with pytest.raises(ValueError, match="do not divide into 16x16 patches"):
        enc(torch.randn(1, 5, 6, 24, 32))
    with pytest.raises(ValueError, match=r"expected Plücker maps \[B,F,6,H,W\]"):
        enc(torch.randn(5, 6, 32, 32))
    two = G.GameCraftCameraEncoder(hidden_size=8, temporal_compression_ratio=2)
    assert two(torch.randn(1, 5, 6, 16, 16)).shape == (1, 8, 3, 1, 1)


def test_zero_init_output_is_exactly_zero():
    torch.manual_seed(0)
    enc = G.GameCraftCameraEncoder.from_backbone_config(24)
    cam = camera_from_timeline(parse_timeline("W+RIGHT*2"), Motion(move_speed=0.5))
    x = cam.plucker(32, 32)[None]
    out = enc(x)
    assert torch.equal(out, torch.zeros_like(out)) and enc.scale.detach().item() == 1.0
    tokens = torch.randn(out.shape)
    assert torch.equal(tokens + out, tokens)  # added after the patch embedding: the backbone sees no change
    assert sum(p.numel() for p in enc.parameters()) == 192 * 385 + 2 * 192 + 96 * 193 + 2 * 96 + 16 * 97 + 1 \
        + 24 * 16 * 4 + 24


def test_blockwise_encoding_equals_the_full_video():
    enc = _randomise(G.GameCraftCameraEncoder.from_backbone_config(16)).eval()
    x = torch.randn(1, 33, 6, 16, 32)  # blocks: frames 0..8, 9..20, 21..32
    with torch.no_grad():
        full = enc(x)
        parts = torch.cat([enc(x[:, :9]), enc(x[:, 9:21]), enc(x[:, 21:33])], dim=2)
    assert full.shape[2] == 9 and float(full.abs().max()) > 0
    torch.testing.assert_close(parts, full, rtol=1e-6, atol=1e-6)


def test_save_load_identical_and_shapes_checked_first(tmp_path, monkeypatch):
    enc = _randomise(G.GameCraftCameraEncoder.from_backbone_config(16, patch_size=(1, 2, 2))).eval()
    path = G.save_encoder(ControlBranch(kind=G.KIND, family="wan", module=enc), tmp_path / "c.safetensors")
    meta = weights.read_metadata(path)
    assert meta["kind"] == "gamecraft_camera" and meta["family"] == "wan"
    assert json.loads(meta["interplay_config"]) == {"hidden_size": 16, "in_channels": 6, "downscale_coef": 8,
                                                    "out_channels": 16, "patch_size": [1, 2, 2],
                                                    "temporal_compression_ratio": 4}
    br = G.load_encoder(path)
    assert br.kind == G.KIND and br.family == "wan" and br.source == str(path)
    x = torch.randn(1, 9, 6, 16, 16)
    assert torch.equal(br.module(x), enc(x))
    assert all(torch.equal(a, b) for a, b in zip(br.module.state_dict().values(), enc.state_dict().values()))
    assert not any(p.requires_grad for p in br.module.parameters())
    assert G.load_encoder(path, dtype=torch.bfloat16).module.scale.dtype == torch.bfloat16

    # a config that does not match the weights is refused from the header alone, before any weight is read
    sd = {k: v.contiguous() for k, v in enc.state_dict().items()}
    bad_meta = dict(meta, interplay_config=json.dumps({**json.loads(meta["interplay_config"]), "hidden_size": 64}))
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad), metadata=bad_meta)
    read = []

    def no_weights(*a, **k):
        read.append(a)
        raise AssertionError("weights were read")

    monkeypatch.setattr(weights, "read_safetensors", no_weights)
    with pytest.raises(ValueError, match=r"camera_in.proj.weight: file \(16, 16, 1, 2, 2\) expected "
                                         r"\(64, 16, 1, 2, 2\)"):
        G.load_encoder(bad)
    assert read == []
    huge = tmp_path / "huge.safetensors"
    save_file(sd, str(huge), metadata=dict(meta, interplay_config=json.dumps({"hidden_size": 10 ** 9})))
    with pytest.raises(ValueError, match=r"hidden_size must be a whole number in 1..65536"):
        G.load_encoder(huge)


def test_load_without_metadata_and_wrong_kind(tmp_path):
    enc = _randomise(G.GameCraftCameraEncoder(hidden_size=12, patch_size=(1, 1, 1)))
    bare = tmp_path / "cameranet.safetensors"  # a converted GameCraft-1 CameraNet has only the tensors
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(bare))
    m = G.load_encoder(bare).module
    assert m.config.hidden_size == 12 and tuple(m.config.patch_size) == (1, 1, 1) and m.config.downscale_coef == 8
    x = torch.randn(1, 5, 6, 8, 8)
    assert torch.equal(m(x), enc(x))
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(1)}, str(other), metadata={"kind": "kinemask"})
    with pytest.raises(ValueError, match="holds a 'kinemask' file, not a camera encoder"):
        G.load_encoder(other)
    with pytest.raises(ValueError, match="not a camera-encoder file"):
        G.infer_config({"a": (1,)})


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        enc = G.GameCraftCameraEncoder.from_backbone_config(5120)
    n = sum(p.numel() for p in enc.parameters())
    assert n == 192 * 385 + 2 * 192 + 96 * 193 + 2 * 96 + 16 * 97 + 1 + 5120 * 16 * 4 + 5120  # ~0.43 M
