"""LoRA scoped to named layers plus fully trained extra modules in one task, on the tiny CogVideoX and SVD:
which layers get the LoRA, which weights train and at which learning rate, save -> apply, resume, bad names."""
import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from interplay.models.backbones import cogvideox as cvx
from interplay.models.backbones import svd as svdb
from interplay.models.sampling import edm
from interplay.models.training import lora as L
from interplay.models.training import trainer as T

CVX_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
SVD_PATHS = ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
             "up_blocks.1.attentions.0.temporal_transformer_blocks.0.attn2.to_v")


def cvx_inputs(bb, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = bb.denoiser.config
    return dict(hidden_states=torch.randn(1, 2, cfg.in_channels, 4, 4, generator=g).to(bb.dtype),
                encoder_hidden_states=torch.randn(1, 8, cfg.text_embed_dim, generator=g).to(bb.dtype),
                timestep=torch.tensor([500]), return_dict=False)


def cvx_out(bb, seed=0):
    with torch.no_grad():
        return bb.denoiser(**cvx_inputs(bb, seed))[0]


def svd_inputs(bb, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = bb.denoiser.config
    return (torch.randn(1, 2, cfg.in_channels, 8, 8, generator=g), torch.tensor([0.3]),
            torch.randn(1, 1, cfg.cross_attention_dim, generator=g), torch.tensor([[6.0, 127.0, 0.02]]))


def svd_out(bb, seed=0):
    with torch.no_grad():
        return edm.model_forward(bb, *svd_inputs(bb, seed))


class Regress:
    """The frozen model's forward regressed onto a fixed random target (a stand-in for the family objective that
    keeps the test fast): the loss of each family through its real denoiser class."""

    def __init__(self, bb):
        self.bb = bb
        self.svd = bb.family == "svd"

    def config(self):
        return {"task": "regress"}

    def loss(self, batch, generator):
        i = int(batch["i"][0])
        if self.svd:
            out = edm.model_forward(self.bb, *svd_inputs(self.bb, i))
        else:
            out = self.bb.denoiser(**cvx_inputs(self.bb, i))[0]
        y = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        return ((out - y) ** 2).mean()


class DS(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"i": torch.tensor(i)}


def cfg(steps, **kw):
    return T.TrainConfig(steps=steps, lr=1e-2, batch_size=1, checkpoint_every=0, clip_norm=0.0, **kw)


@pytest.fixture(scope="module")
def cvx_bb():
    return cvx.random_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def svd_bb():
    return svdb.random_backbone("tiny", seed=0)


def cvx_task(bb, **kw):
    kw = {"rank": 2, "alpha": 4, "target_modules": CVX_TARGETS, "lora_layers": [1],
          "train_modules": ["patch_embed.proj"], "train_modules_lr_scale": 0.5, **kw}
    return L.LoraTask(bb, Regress, **kw)


def lora_paths(module):
    return sorted(n for n, m in module.named_modules() if isinstance(m, LoraLayer))


def test_named_layers_only_and_extras_train_at_their_lr(cvx_bb, tmp_path):
    bb = cvx_bb
    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    task = cvx_task(bb)
    assert lora_paths(task.denoiser) == sorted(f"transformer_blocks.1.attn1.{t}" for t in CVX_TARGETS)
    assert sorted(task.module_params) == ["patch_embed.proj.bias", "patch_embed.proj.weight"]
    assert len(task.trainable_parameters()) == 4 * 2 + 2
    groups = task.param_groups()
    assert [(g["name"], g["lr_scale"], len(g["params"])) for g in groups] == [("lora", 1.0, 8),
                                                                             ("train_modules", 0.5, 2)]
    assert [g["lr"] for g in T.optimizer_groups(task, task.trainable_parameters(), 1e-2)] == [1e-2, 5e-3]
    # masters: float32 copies of their own, the backbone's own proj untouched
    proj = task.denoiser.patch_embed.proj
    assert proj.weight is not bb.denoiser.patch_embed.proj.weight and proj.weight.dtype == torch.float32
    assert task.denoiser.transformer_blocks[0].attn1.to_q.weight is bb.denoiser.transformer_blocks[0].attn1.to_q.weight
    frozen = {n: p.clone() for n, p in task.denoiser.named_parameters() if "lora_" not in n
              and not n.startswith("patch_embed.proj.")}
    w0 = {k: p.detach().clone() for k, p in task.module_params.items()}
    b0 = {n: p.detach().clone() for n, p in task.denoiser.named_parameters() if ".lora_B." in n}
    # one Adam step from zero moments moves each weight with a non-zero gradient by lr x scale (|g| >> eps)
    T.train(task, DS(), cfg(1), tmp_path)
    dw = (task.module_params["patch_embed.proj.weight"].detach() - w0["patch_embed.proj.weight"]).abs()
    db = torch.stack([(p.detach() - b0[n]).abs().max() for n, p in task.denoiser.named_parameters() if n in b0])
    assert dw.max().item() == pytest.approx(5e-3, rel=1e-3) and (dw > 0).float().mean() > 0.9
    torch.testing.assert_close(db, torch.full_like(db, 1e-2), rtol=1e-3, atol=0)
    assert all(torch.equal(frozen[n], p) for n, p in task.denoiser.named_parameters() if n in frozen)
    assert all(torch.equal(before[k], v) for k, v in bb.denoiser.state_dict().items())
    assert type(bb.denoiser.transformer_blocks[1].attn1.to_q) is torch.nn.Linear
    assert not any(p.requires_grad for p in bb.denoiser.parameters())


def test_cvx_save_apply_strength_and_resume(cvx_bb, tmp_path):
    bb = cvx_bb
    task = cvx_task(bb)
    T.train(task, DS(), cfg(3), tmp_path / "a")
    ck = tmp_path / "a" / T.CHECKPOINT
    sd, meta = L.read_lora(ck)
    assert sorted(k for k in sd if k.startswith("extra.")) == ["extra.patch_embed.proj.bias",
                                                                "extra.patch_embed.proj.weight"]
    assert sum(k.endswith("lora_A.weight") for k in sd) == 4
    assert meta["train_modules"] == ["patch_embed.proj"] and meta["lora_layers"] == [1]
    assert meta["train_modules_lr_scale"] == 0.5
    want, base = cvx_out(task.backbone), cvx_out(bb)
    applied = L.apply_lora(bb, ck)
    torch.testing.assert_close(cvx_out(applied), want, rtol=0, atol=1e-6)
    assert lora_paths(applied.denoiser) == lora_paths(task.denoiser)
    # strength scales the LoRA only: at 0 the output is the backbone with the trained proj, no LoRA
    ref = bb.replace(denoiser=copy.deepcopy(bb.denoiser))
    with torch.no_grad():
        ref.denoiser.patch_embed.proj.weight.copy_(sd["extra.patch_embed.proj.weight"])
        ref.denoiser.patch_embed.proj.bias.copy_(sd["extra.patch_embed.proj.bias"])
    zero = L.apply_lora(bb, ck, strength=0.0)
    torch.testing.assert_close(cvx_out(zero), cvx_out(ref), rtol=0, atol=0)
    assert (cvx_out(zero) - base).abs().max() > 1e-4 and (want - cvx_out(zero)).abs().max() > 1e-4
    assert torch.equal(cvx_out(bb), base)  # the input bundle is never changed
    # resume: 2 steps, a fresh task, 1 more == 3 straight, bit for bit
    T.train(cvx_task(bb), DS(), cfg(2), tmp_path / "b")
    T.train(cvx_task(bb), DS(), cfg(3), tmp_path / "b")
    got = load_file(str(tmp_path / "b" / T.CHECKPOINT))
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_svd_full_paths_and_extras(svd_bb, tmp_path):
    bb = svd_bb
    task = L.LoraTask(bb, Regress, rank=2, target_modules=SVD_PATHS, train_modules=["conv_in"],
                      train_modules_lr_scale=2.0)
    assert lora_paths(task.denoiser) == sorted(SVD_PATHS)
    assert sorted(task.module_params) == ["conv_in.bias", "conv_in.weight"]
    w0 = task.module_params["conv_in.weight"].detach().clone()
    T.train(task, DS(), cfg(1), tmp_path)
    dw = (task.module_params["conv_in.weight"].detach() - w0).abs()
    assert dw.max().item() == pytest.approx(2e-2, rel=1e-3)
    assert not torch.equal(bb.denoiser.conv_in.weight, task.denoiser.conv_in.weight)
    applied = L.apply_lora(bb, tmp_path / T.CHECKPOINT)
    torch.testing.assert_close(svd_out(applied), svd_out(task.backbone), rtol=0, atol=1e-6)
    assert not torch.allclose(svd_out(applied), svd_out(bb), atol=1e-5)
    with pytest.raises(ValueError, match="lora_layers needs a model with one numbered block list.*svd"):
        L.LoraTask(bb, Regress, rank=2, lora_layers=[0])


def test_defaults_unchanged(cvx_bb, tmp_path):
    """No layers, no extras: the same LoRA layers, one parameter group and no new metadata keys."""
    task = L.LoraTask(cvx_bb, Regress, rank=2)
    assert len(lora_paths(task.denoiser)) == 2 * 4 and task.param_groups()[0]["name"] == "all"
    T.train(task, DS(), cfg(1), tmp_path)
    sd, meta = L.read_lora(tmp_path / T.CHECKPOINT)
    assert not any(k.startswith("extra.") for k in sd)
    assert sorted(meta) == ["alpha", "dropout", "family", "prefix", "rank", "target_modules"]


@pytest.mark.parametrize("kw, msg", [
    ({"lora_layers": [2]}, r"lora_layers entry 2 is not a block of this cogvideox model; it has 2 blocks "
                           r"\(transformer_blocks.0 .. transformer_blocks.1\)"),
    ({"lora_layers": [1], "target_modules": ["to_qq"]}, r"'to_qq' is not in block transformer_blocks.1.*"
                                                        r"did you mean 'to_q'"),
    ({"target_modules": ["to_q", "transformer_blocks.1.attn1.to_vv"]},
     r"target module 'transformer_blocks.1.attn1.to_vv' is not in this cogvideox model.*did you mean "
     r"'transformer_blocks.1.attn1.to_v'"),
    ({"train_modules": ["patch_embed.prj"]}, r"train_modules entry 'patch_embed.prj'.*did you mean "
                                             r"'patch_embed.proj'"),
    ({"lora_layers": [1], "train_modules": ["transformer_blocks.1.attn1"]},
     r"'transformer_blocks.1.attn1' overlaps the LoRA layer 'transformer_blocks.1.attn1.to_q'"),
    ({"train_modules": ["patch_embed", "patch_embed.proj"]}, r"one contains the other"),
    ({"train_modules": ["patch_embed.proj"], "train_modules_lr_scale": 0}, r"train_modules_lr_scale must be a "
                                                                           r"number > 0; got 0"),
])
def test_bad_names_refused(cvx_bb, kw, msg):
    with pytest.raises(ValueError, match=msg):
        L.LoraTask(cvx_bb, Regress, rank=2, **kw)


def test_bad_extras_in_a_file(cvx_bb, tmp_path, monkeypatch):
    task = cvx_task(cvx_bb)
    T.train(task, DS(), cfg(1), tmp_path)
    ck = tmp_path / T.CHECKPOINT
    sd = load_file(str(ck))
    from safetensors import safe_open

    with safe_open(str(ck), framework="pt") as f:
        meta = f.metadata()
    wide = dict(sd, **{"extra.patch_embed.proj.weight": torch.zeros(32, 24, 2, 2)})
    save_file(wide, str(tmp_path / "wide.safetensors"), metadata=meta)

    def boom(*a, **k):
        raise AssertionError("the weights were read before the header was checked")

    monkeypatch.setattr(L, "read_safetensors", boom)
    with pytest.raises(ValueError, match=r"wide.safetensors does not fit.*patch_embed.proj.weight: \(32, 24, 2, 2\) "
                                         r"in the file, \(32, 8, 2, 2\) in the model"):
        L.apply_lora(cvx_bb, tmp_path / "wide.safetensors")
    save_file(sd, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match="its metadata lists no train_modules"):
        L.apply_lora(cvx_bb, tmp_path / "nometa.safetensors")
    save_file(dict(sd, **{"extra.proj_out.weight": torch.zeros(1)}), str(tmp_path / "out.safetensors"),
              metadata=meta)
    with pytest.raises(ValueError, match=r"extra.proj_out.weight, outside the train_modules"):
        L.apply_lora(cvx_bb, tmp_path / "out.safetensors")


def test_float32_masters_in_a_bf16_model(tmp_path):
    """The extras train as float32 masters while the model computes in bf16: their input runs in float32 and
    their output returns in bf16, so the rest of the forward is the bf16 one."""
    bb = cvx.random_backbone("tiny", seed=0, dtype=torch.bfloat16)
    task = cvx_task(bb)
    proj = task.denoiser.patch_embed.proj
    assert proj.weight.dtype == torch.float32 and bb.denoiser.patch_embed.proj.weight.dtype == torch.bfloat16
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        y = proj(x)
        ref = torch.nn.functional.conv2d(x.float(), proj.weight, proj.bias, stride=2).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    w0 = proj.weight.detach().clone()
    T.train(task, DS(), cfg(1), tmp_path)
    assert proj.weight.dtype == torch.float32 and (proj.weight.detach() - w0).abs().max() > 1e-3
    applied = L.apply_lora(bb, tmp_path / T.CHECKPOINT)
    assert applied.denoiser.patch_embed.proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(applied.denoiser.patch_embed.proj.weight, proj.weight.detach().to(torch.bfloat16),
                               rtol=0, atol=0)
