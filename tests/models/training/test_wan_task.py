"""The Wan training base on the tiny kit models: the flow-matching loss is the hand-computed one on diffusers'
transformers (each sample on the expert its timestep selects), one expert's range only, gradients reach only the
task's attachment, TI2V's clean first frame is out of the loss, and the trainer runs the whole-denoiser task."""
import pytest
import torch
from kit import tiny

from interplay.models.backbones import base as B
from interplay.models.backbones import wan
from interplay.models.training import trainer as T
from interplay.models.training import wan as WT
from interplay.models.training.objectives import shift_sigma

F, H, W = 5, 32, 32


@pytest.fixture(scope="module")
def bb():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


def _batch(n=2, seed=0, size=(F, H, W)):
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.rand(n, *size, 3, generator=g), "caption": [f"a red box moves {i}" for i in range(n)]}


class ExpertLog(B.Attachment):
    def __init__(self):
        self.calls = []

    def begin(self, ctx):
        self.calls.append((ctx.extra["expert"], ctx.timestep.clone()))


def _hand_loss(bb, batch, seed):
    """The objective written out on diffusers' own transformers (draw order: latent sample, s, noise)."""
    g = torch.Generator().manual_seed(seed)
    frames = batch["frames"]
    with torch.no_grad():
        x0 = wan.encode_video(bb, frames, generator=g)
        cond = wan.i2v_condition(bb, frames[:, 0], F, H, W).condition
        emb = wan.encode_prompt(bb, batch["caption"])
    sigma = shift_sigma(torch.rand(2, generator=g), 5.0)
    n = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t, target = (1 - s) * x0 + s * n, n - x0
    per = []
    for i in range(2):
        t = sigma[i:i + 1] * 1000
        model = bb.denoiser if float(t) >= 900 else bb.experts["low_noise"]
        pred = model(torch.cat([x_t[i:i + 1], cond[i:i + 1]], dim=1), t, emb[i:i + 1], return_dict=False)[0]
        per.append(((pred - target[i:i + 1]) ** 2).mean())
    return torch.stack(per).mean(), ["high_noise" if float(v) >= 0.9 else "low_noise" for v in sigma]


def _straddling_seed():
    """A seed whose two sampled timesteps fall on different experts (the draws _hand_loss makes, VAE-free)."""
    for s in range(100):
        g = torch.Generator().manual_seed(s)
        torch.randn(2, 16, 2, 4, 4, generator=g)  # the latent sample
        sig = shift_sigma(torch.rand(2, generator=g), 5.0)
        if (sig >= 0.9).sum() == 1:
            return s


def test_the_loss_is_flow_matching_on_the_expert_each_timestep_selects(bb):
    task = WT.WanBackboneTask(bb, train=False)
    log = ExpertLog()
    seed = _straddling_seed()
    ref, experts = _hand_loss(bb, _batch(), seed)
    assert set(experts) == {"high_noise", "low_noise"}
    got = task.loss(_batch(), torch.Generator().manual_seed(seed), attachments=[log])
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    # one forward per expert, each on the rows whose t it owns
    assert sorted(e for e, _ in log.calls) == ["high_noise", "low_noise"]
    for e, t in log.calls:
        assert t.shape == (1,) and ((t >= 900).all() if e == "high_noise" else (t < 900).all())


def test_one_expert_trains_on_its_own_timestep_range_only(bb):
    for expert in ("high_noise", "low_noise"):
        task = WT.WanBackboneTask(bb, train=False, expert=expert)
        log = ExpertLog()
        task.loss(_batch(3, 1), torch.Generator().manual_seed(0), attachments=[log])
        (e, ts), = log.calls  # every row on this expert, in one forward
        assert e == expert and len(ts) == 3
        assert (ts >= 900).all() if expert == "high_noise" else (ts < 900).all()
    for expert in ("high_noise", "low_noise"):
        s = WT.expert_sigmas(1000, torch.Generator().manual_seed(0), expert=expert, boundary=0.9, shift=5.0)
        assert (float(s.min()) >= 0.9 and float(s.max()) <= 1.0) if expert == "high_noise" else \
            (float(s.max()) < 0.9 and float(s.min()) >= 0.0)
    assert float(WT.unshift_sigma(shift_sigma(torch.tensor(0.3), 5.0), 5.0)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="trains one expert at a time"):
        WT.WanBackboneTask(bb, train=True)
    with pytest.raises(ValueError, match="expert must be one of"):
        WT.WanBackboneTask(bb, train=False, expert="both")


class CameraBias(B.Attachment):
    """A toy trainable attachment: a learned vector added to the video tokens after the embedding."""

    def __init__(self, dim):
        self.vec = torch.nn.Parameter(torch.zeros(dim))

    def after_embed(self, ctx, hidden):
        return hidden + self.vec

    def modules(self):
        m = torch.nn.Module()
        m.vec = self.vec
        return [m]


def test_gradients_reach_the_attachment_and_never_the_backbone(bb):
    task = WT.WanBackboneTask(bb, train=False)
    att = CameraBias(bb.denoiser.config.num_attention_heads * bb.denoiser.config.attention_head_dim)
    loss = task.loss(_batch(), torch.Generator().manual_seed(1), attachments=[att])
    loss.backward()
    assert att.vec.grad is not None and float(att.vec.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for m in wan.expert_modules(bb).values()
               for p in m.parameters())


class SpoilFrameZero(B.Attachment):
    def end(self, ctx, out):
        out = out.clone()
        out[:, :, 0] += 100.0
        return out


def test_ti2v_first_frame_tokens_are_clean_and_out_of_the_loss():
    ti = wan.load_wan(tiny.tiny_wan_dir(variant="2.2-ti2v"), dtype="fp32", device="cpu")
    task = WT.WanBackboneTask(ti, train=False)
    batch = _batch(1, 3)  # 32 px: 1 x 1 tokens per latent frame with the 16x VAE and the 2x2 patch
    log = ExpertLog()
    a = task.loss(batch, torch.Generator().manual_seed(2), attachments=[log])
    b = task.loss(batch, torch.Generator().manual_seed(2), attachments=[SpoilFrameZero()])
    assert torch.equal(a, b)  # whatever the model says about latent frame 0 costs nothing
    (_, t), = log.calls
    assert t.shape == (1, 2) and float(t[0, 0]) == 0 and float(t[0, 1]) > 0
    x0, conds = WT.WanBackboneTask(ti, train=False, image_dropout=1.0).conditions(
        batch["frames"], batch["caption"], torch.Generator().manual_seed(2))
    assert float(conds.token_mask.min()) == 1  # image dropped: every token noisy


def test_the_trainer_runs_the_whole_denoiser_task(tmp_path):
    t2v = wan.load_wan(tiny.tiny_wan_dir(variant="2.1-t2v"), dtype="fp32", device="cpu")
    before = {k: v.clone() for k, v in t2v.denoiser.state_dict().items()}
    task = WT.WanBackboneTask(t2v)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            b = _batch(1, i)
            return {"frames": b["frames"][0], "caption": b["caption"][0]}
    res = T.train(task, DS(), T.TrainConfig(steps=2, lr=1e-3, batch_size=1, seed=0), tmp_path)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    after = t2v.denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from safetensors import safe_open

    with safe_open(str(tmp_path / T.CHECKPOINT), "pt") as f:
        assert set(f.keys()) == set(before) and '"in_channels": 16' in f.metadata()["config"]
