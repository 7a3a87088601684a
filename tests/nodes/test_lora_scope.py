"""Train LoRA's lora_layers / train_modules inputs and `interplay train` [options]: a scoped LoRA plus a fully
trained patch_embed.proj, re-applied by the LoRA Loader; defaults leave the node's run as before."""
import json

import pytest
import torch
from peft.tuners.lora import LoraLayer

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cvx
from interplay.models.training import cli
from interplay.models.training import lora as L
from interplay.nodes import lora as NL
from interplay.nodes import training as NT

TRAIN = dict(steps=2, lr=5e-2, batch_size=1, grad_accum=1, precision="fp32", seed=0, checkpoint_every=0,
             resume=True)
EXTRA = json.dumps({"v": 1, "options": {"max_text_length": 8}})


def _out(bb):
    g = torch.Generator().manual_seed(0)
    cfg = bb.denoiser.config
    with torch.no_grad():
        return bb.denoiser(hidden_states=torch.randn(1, 2, cfg.in_channels, 4, 4, generator=g),
                           encoder_hidden_states=torch.randn(1, 8, cfg.text_embed_dim, generator=g),
                           timestep=torch.tensor([500]), return_dict=False)[0]


@pytest.fixture()
def folders(push_clips, tmp_path):
    runtime.set_models_root(tmp_path / "models")
    runtime.set_input_directory(push_clips)
    yield push_clips
    runtime.set_models_root(None)
    runtime.set_input_directory(None)


def test_node_scoped_lora_with_trained_projection(folders):
    bb = cvx.random_backbone("tiny", seed=0)
    proj0 = bb.denoiser.patch_embed.proj.weight.clone()
    out = NT.InterplayTrainLora().train(bb, str(folders), "scoped", 9, 2, 4.0, "to_q,to_v", extra=EXTRA,
                                        lora_layers="1", train_modules="patch_embed.proj",
                                        train_modules_lr_scale=0.5, **TRAIN)
    trained, ck = out["result"][0], out["result"][2]
    assert sorted(n for n, m in trained.denoiser.named_modules() if isinstance(m, LoraLayer)) == [
        "transformer_blocks.1.attn1.to_q", "transformer_blocks.1.attn1.to_v"]
    _, meta = L.read_lora(ck)
    assert (meta["lora_layers"], meta["train_modules"], meta["train_modules_lr_scale"]) == ([1], ["patch_embed.proj"],
                                                                                          0.5)
    assert torch.equal(bb.denoiser.patch_embed.proj.weight, proj0)
    assert not torch.equal(trained.denoiser.patch_embed.proj.weight, proj0)
    applied = NL.InterplayLoraLoader().load(bb, "interplay/scoped/checkpoint.safetensors", 1.0)[0]
    torch.testing.assert_close(_out(applied), _out(trained), rtol=0, atol=1e-6)
    # the run's parameter groups reach the optimizer state: lr x 1 for the LoRA, lr x 0.5 for the projection
    from interplay.models.training.trainer import read_state

    _, st = read_state(runtime.model_folders("interplay")[0] / "scoped")
    assert [(g["name"], g["lr"], g["lr_scale"]) for g in st["optimizer"]["param_groups"]] == [
        ("lora", 5e-2, 1.0), ("train_modules", 2.5e-2, 0.5)]


def test_node_bad_inputs_named(folders):
    bb = cvx.random_backbone("tiny", seed=0)
    node = NT.InterplayTrainLora()
    with pytest.raises(ValueError, match="Train LoRA: 'lora_layers' must be block indices"):
        node.train(bb, str(folders), "bad", 9, 2, 4.0, "to_q", extra=EXTRA, lora_layers="one", **TRAIN)
    with pytest.raises(ValueError, match="Train LoRA: LoRA: train_modules entry 'patch_embed.prj'.*'patch_embed.proj'"):
        node.train(bb, str(folders), "bad", 9, 2, 4.0, "to_q", extra=EXTRA, train_modules="patch_embed.prj", **TRAIN)
    inputs = NT.InterplayTrainLora.INPUT_TYPES()
    assert list(inputs["optional"]) == ["extra", "lora_layers", "train_modules", "train_modules_lr_scale"]
    assert all("tooltip" in v[1] for v in inputs["optional"].values())


TOML = """
task = "lora"
out_dir = "{out}"
[backbone]
random = "tiny"
dtype = "fp32"
device = "cpu"
[dataset]
root = "{data}"
frames = 9
[options]
max_text_length = 8
rank = 2
target_modules = ["to_q"]
lora_layers = {layers}
train_modules = ["patch_embed.proj"]
train_modules_lr_scale = 0.25
[train]
steps = 1
lr = 1e-3
checkpoint_every = 0
"""


def test_cli_config_options(push_clips, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.format(out=tmp_path / "out", data=push_clips, layers="[0]"))
    assert cli.main([str(cfg)]) == 0
    sd, meta = L.read_lora(tmp_path / "out" / "checkpoint.safetensors")
    assert sorted(k for k in sd if "lora_A" in k) == ["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    assert meta["train_modules"] == ["patch_embed.proj"] and "extra.patch_embed.proj.weight" in sd
    cfg.write_text(TOML.format(out=tmp_path / "out2", data=push_clips, layers='"0"'))
    assert cli.main([str(cfg)]) == 2
    assert "[options] lora_layers must be a list, e.g. [7, 11, 12]; got '0'" in capsys.readouterr().err
