"""Widening the input projection (MATRIX's ID-map channels): the new channels at zero leave the output unchanged,
the input bundle is untouched, and the widened channels do reach the output once their kernels are non-zero."""
import pytest
import torch

from interplay.models.backbones import cogvideox as cog
from interplay.models.backbones.widen import default_extra_channels, input_projection, widen_input


@pytest.fixture(scope="module")
def cbb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def test_widened_projection_with_zero_channels_equals_the_plain_backbone(cbb):
    before = {k: v.clone() for k, v in cbb.denoiser.state_dict().items()}
    wide = widen_input(cbb, "id_map")
    assert default_extra_channels(cbb) == 4
    assert wide.layout.parts == (("noise", 4), ("image", 4), ("id_map", 4)) and cbb.layout.channels == 8
    assert wide.denoiser.config.in_channels == 12 and cbb.denoiser.config.in_channels == 8
    old, new = input_projection(cbb), input_projection(wide)
    assert tuple(new.weight.shape) == (32, 12, 2, 2) and tuple(old.weight.shape) == (32, 8, 2, 2)
    assert torch.equal(new.weight[:, :8], old.weight) and float(new.weight[:, 8:].abs().max()) == 0.0
    assert torch.equal(new.bias, old.bias) and new.weight.data_ptr() != old.weight.data_ptr()
    # every other tensor is shared, not copied
    blk = wide.denoiser.transformer_blocks[0].attn1.to_q.weight
    assert blk.data_ptr() == cbb.denoiser.transformer_blocks[0].attn1.to_q.weight.data_ptr()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 8, generator=g)
    t, e = torch.tensor([700, 300]), torch.randn(2, 7, 32, generator=g)
    idm = torch.randn(2, 3, 4, 8, 8, generator=g)
    with torch.no_grad():
        plain = cog.forward(cbb, x, t, e)
        zero_in = cog.forward(wide, wide.layout.assemble({"noise": x[:, :, :4], "image": x[:, :, 4:]}, dim=2), t, e)
        any_in = cog.forward(wide, torch.cat([x, idm], 2), t, e)  # zero kernels: the ID map cannot matter
    # bitwise on CPU: the wider conv sums extra exact zeros (checked on this machine's kernels)
    assert torch.equal(zero_in, plain) and torch.equal(any_in, plain)
    with torch.no_grad():
        new.weight[:, 8:].normal_(generator=g)
        changed = cog.forward(wide, torch.cat([x, idm], 2), t, e)
    assert (changed - plain).abs().max() > 1e-3
    assert all(torch.equal(v, cbb.denoiser.state_dict()[k]) for k, v in before.items())  # input untouched


def test_widen_errors(cbb):
    wide = widen_input(cbb, "id_map", 4)
    with pytest.raises(ValueError, match="already has a 'id_map' input"):
        widen_input(wide, "id_map")
    with pytest.raises(ValueError, match="channels must be >= 1"):
        widen_input(cbb, "extra", 0)
