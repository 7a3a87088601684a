import pytest
import torch

from interplay.nodes.frames import InterplaySelectFrames


def test_select_first_last_and_range():
    x = torch.arange(5, dtype=torch.float32)[:, None, None, None].expand(5, 2, 2, 3).contiguous()
    node = InterplaySelectFrames()
    assert node.select(x, 0, 1)[0][:, 0, 0, 0].tolist() == [0.0]
    assert node.select(x, -1, 1)[0][:, 0, 0, 0].tolist() == [4.0]
    assert node.select(x, 1, 3)[0][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]


def test_select_out_of_range_names_input():
    x = torch.zeros(3, 2, 2, 3)
    with pytest.raises(ValueError, match="start=5"):
        InterplaySelectFrames().select(x, 5, 1)
    with pytest.raises(ValueError, match="count=3"):
        InterplaySelectFrames().select(x, 1, 3)


def test_select_masks_frame_zero():
    from interplay.nodes.frames import InterplaySelectMasks

    m = torch.zeros(4, 3, 3)
    m[2, 1, 1] = 1
    out = InterplaySelectMasks().select(m, 2, 1)[0]
    assert out.shape == (1, 3, 3) and out[0, 1, 1] == 1 and out.sum() == 1
    assert InterplaySelectMasks().select(m[0], 0, 1)[0].shape == (1, 3, 3)  # a single [H,W] mask
    with pytest.raises(ValueError, match="InterplaySelectMasks: start=4"):
        InterplaySelectMasks().select(m, 4, 1)
