"""LoRA via peft: zero-init identity, frozen source untouched, diffusers key format, save -> apply round trip."""
import pytest
import torch
from torch import nn

from interplay.models.backbones.base import Backbone
from interplay.models.training import lora as L
from interplay.models.training import trainer as T


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k = nn.Linear(6, 6), nn.Linear(6, 6)
        self.to_out = nn.ModuleList([nn.Linear(6, 6)])
        self.ff = nn.Linear(6, 6)

    def forward(self, x):
        return x + self.to_out[0](torch.tanh(self.to_q(x)) * self.to_k(x)) + self.ff(x)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for b in self.transformer_blocks:
            x = b(x)
        return x


class BaseTask:
    """Regress den(x) onto a fixed target: a stand-in for the family objective on the frozen model."""

    def __init__(self, bb):
        self.bb = bb

    def config(self):
        return {"task": "toy_base"}

    def loss(self, batch, generator):
        x = batch["x"] + 0.01 * torch.randn(batch["x"].shape, generator=generator)
        return ((self.bb.denoiser(x) - batch["y"]) ** 2).mean()


class DS(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _bb():
    torch.manual_seed(0)
    return Backbone(family="cogvideox", variant="toy", denoiser=Toy().eval())


def test_zero_init_identity_and_source_untouched(tmp_path):
    bb = _bb()
    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    task = L.LoraTask(bb, BaseTask, rank=2, target_modules=("to_q", "to_k", "to_out.0"))
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.equal(task.backbone.denoiser(x), bb.denoiser(x))  # B = 0 at init
    assert len(task.trainable_parameters()) == 2 * 2 * 3  # A and B, 2 blocks x 3 targets
    res = T.train(task, DS(), T.TrainConfig(steps=8, lr=2e-2, batch_size=4, checkpoint_every=0), tmp_path)
    assert res.losses[-1] < res.losses[0]
    # the input bundle: same weights bit for bit, no peft wrappers, no gradients
    assert all(torch.equal(before[k], v) for k, v in bb.denoiser.state_dict().items())
    assert type(bb.denoiser.transformer_blocks[0].to_q) is nn.Linear
    assert all(p.grad is None for p in bb.denoiser.parameters())
    # the shared copy really shares the frozen tensors
    assert task.denoiser.transformer_blocks[0].ff.weight is bb.denoiser.transformer_blocks[0].ff.weight
    with torch.no_grad():
        assert not torch.equal(task.backbone.denoiser(x), bb.denoiser(x))


def test_diffusers_keys_and_apply_round_trip(tmp_path):
    bb = _bb()
    task = L.LoraTask(bb, BaseTask, rank=2, alpha=4)
    T.train(task, DS(), T.TrainConfig(steps=3, lr=5e-2, batch_size=2, checkpoint_every=0), tmp_path)
    sd, meta = L.read_lora(tmp_path / T.CHECKPOINT)
    assert "transformer.transformer_blocks.0.to_q.lora_A.weight" in sd
    assert "transformer.transformer_blocks.1.to_out.0.lora_B.weight" in sd
    assert sd["transformer.transformer_blocks.0.to_q.lora_A.weight"].shape == (2, 6)
    assert meta["rank"] == 2 and meta["alpha"] == 4.0 and meta["target_modules"] == list(L.DEFAULT_TARGETS)
    applied = L.apply_lora(bb, tmp_path / T.CHECKPOINT)
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(applied.denoiser(x), task.backbone.denoiser(x), rtol=0, atol=1e-6)
        zero = L.apply_lora(bb, tmp_path / T.CHECKPOINT, strength=0.0)
        torch.testing.assert_close(zero.denoiser(x), bb.denoiser(x), rtol=0, atol=0)
    assert applied.loras[-1] == (T.CHECKPOINT, 1.0) and bb.loras == ()
    # resume path: load_trainable_state_dict restores the same weights into a fresh task
    fresh = L.LoraTask(bb, BaseTask, rank=2, alpha=4)
    fresh.load_trainable_state_dict(sd)
    assert all(torch.equal(fresh.trainable_state_dict()[k], sd[k]) for k in sd)


def test_missing_targets_named():
    with pytest.raises(ValueError, match="none of the target modules \\['attn_x'\\]"):
        L.LoraTask(_bb(), BaseTask, rank=2, target_modules=("attn_x",))
