"""fp8 storage with upcast at compute and block swap, on toy modules (numbers by hand)."""
import pytest
import torch

from interplay.models.backbones import offload


def test_fp8_storage_computes_with_the_dequantised_weight_and_stays_fp8():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    w = lin.weight.detach().clone()
    scale = torch.tensor(0.5)
    assert offload.store_fp8(lin, torch.float32, lambda n, p: n == "weight", scales={"weight": scale}) == 1
    assert lin.weight.dtype == torch.float8_e4m3fn and lin.bias.dtype == torch.float32
    x = torch.randn(2, 4)
    w_used = lin.weight.float() * 0.5  # what the layer must compute with: fp8 weight x scale
    torch.testing.assert_close(lin(x), x @ w_used.T + lin.bias, rtol=0, atol=0)
    assert lin.weight.dtype == torch.float8_e4m3fn  # the upcast copy lived only during the forward
    assert lin.state_dict()["weight"].dtype == torch.float8_e4m3fn and "weight_scale" not in lin.state_dict()
    assert torch.equal(lin.weight.float(), w.to(torch.float8_e4m3fn).float())  # quantised once, by plain cast
    assert offload.fp8_parameter_names(lin) == ["weight"]
    # applying it again neither re-quantises nor stacks a second hook
    before = lin.weight.detach().clone()
    offload.store_fp8(lin, torch.float32, lambda n, p: n == "weight")
    assert torch.equal(lin.weight.view(torch.uint8), before.view(torch.uint8))
    torch.testing.assert_close(lin(x), x @ w_used.T + lin.bias, rtol=0, atol=0)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3, 3)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(3, 3) for _ in range(3))
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return x * self.scale


def test_block_swap_counts_moves_and_changes_nothing():
    torch.manual_seed(0)
    m = Toy()
    x = torch.randn(2, 3)
    ref = m(x)
    moved = []
    swap = offload.BlockSwap(m, m.blocks, 1, "cpu", "cpu", mover=lambda mod, dev: moved.append((mod, dev.type)))
    assert swap.streamed == [1, 2]
    m(x)  # not active yet: the hooks do nothing
    assert swap.counters.moves_in == 0
    swap.activate()
    moved.clear()
    assert torch.equal(m(x), ref)
    assert [(mod is m.blocks[1], mod is m.blocks[2]) for mod, _ in moved] == [(True, False)] * 2 + [(False, True)] * 2
    assert [d for _, d in moved] == ["cpu"] * 4
    c = swap.counters
    assert (c.moves_in, c.moves_out) == (2, 2) and c.bytes_moved == 4 * (9 + 3) * 4
    swap.park()
    assert not swap.active
    swap.remove()
    m(x)
    assert swap.counters.moves_in == 2
    with pytest.raises(ValueError, match="blocks_on_gpu must be 0..3"):
        offload.BlockSwap(m, m.blocks, 4, "cpu", "cpu")


def test_blocks_for_budget_by_hand():
    # 100 budget - 10 non-block - 20 streaming slot - 5 reserve = 65 -> 3 blocks of 20
    assert offload.blocks_for_budget(100, 10, 20, 8, reserve_bytes=5) == 3
    assert offload.blocks_for_budget(10, 10, 20, 8) == 0
    assert offload.blocks_for_budget(10 ** 9, 10, 20, 8) == 8
