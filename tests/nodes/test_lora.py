"""LoRA Loader node: a Train LoRA run re-applied from disk gives the trained model; strength, stacking, the
diffusers key format without metadata, fp8 storage kept, and each bad file named."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cvx
from interplay.models.training import lora as L
from interplay.models.weights import WeightsFileError
from interplay.nodes import lora as NL
from interplay.nodes import training as NT

TRAIN = dict(steps=2, lr=5e-2, batch_size=1, grad_accum=1, precision="fp32", seed=0, checkpoint_every=0,
             resume=True)
EXTRA = json.dumps({"v": 1, "options": {"max_text_length": 8}})


@pytest.fixture(scope="module")
def clips(push_clips):
    return push_clips


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """(source backbone, backbone out of Train LoRA, models root): one 2-step run, rank 2, alpha 4."""
    root = tmp_path_factory.mktemp("models")
    runtime.set_models_root(root)
    runtime.set_input_directory(clips)  # the node reads datasets only inside the input (or output) folder
    bb = cvx.random_backbone("tiny", seed=0)
    out = NT.InterplayTrainLora().train(bb, str(clips), "run1", 9, 2, 4.0, "to_q,to_v,to_out.0", extra=EXTRA,
                                        **TRAIN)
    runtime.set_models_root(None)
    runtime.set_input_directory(None)
    return bb, out["result"][0], root


def _inputs(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = bb.denoiser.config
    x = torch.randn(1, 2, cfg.in_channels, 4, 4, generator=g)
    text = torch.randn(1, 8, cfg.text_embed_dim, generator=g)
    return dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)


def _out(bb, seed=0):
    with torch.no_grad():
        return bb.denoiser(**_inputs(bb, seed))[0]


def _state(bb):
    return {k: (v.data_ptr(), v.dtype, v.clone()) for k, v in bb.denoiser.state_dict().items()}


def test_trained_run_is_offered_and_reapplies_exactly(trained):
    bb, lora_bb, root = trained
    runtime.set_models_root(root)
    name = "interplay/run1/checkpoint.safetensors"
    choices = NL.lora_choices()
    assert name in choices and "interplay/run1/state.safetensors" not in choices
    before = _state(bb)
    applied = NL.InterplayLoraLoader().load(bb, name, 1.0)[0]
    base, want = _out(bb), _out(lora_bb)
    assert not torch.allclose(want, base, atol=1e-4)  # the LoRA learned something
    torch.testing.assert_close(_out(applied), want, rtol=0, atol=1e-6)
    assert applied.loras == (("checkpoint.safetensors", 1.0),) and bb.loras == ()
    # the source backbone: same tensors, same values, plain Linear layers
    after = _state(bb)
    assert all(after[k][0] == before[k][0] and after[k][1] == before[k][1] and torch.equal(after[k][2], before[k][2])
               for k in before)
    assert type(bb.denoiser.transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    assert not any(p.requires_grad for p in applied.denoiser.parameters())
    torch.testing.assert_close(_out(NL.InterplayLoraLoader().load(bb, name, 0.0)[0]), base, rtol=0, atol=0)


def test_strength_is_linear_and_loras_stack(trained):
    bb, _, root = trained
    runtime.set_models_root(root)
    node, name = NL.InterplayLoraLoader(), "interplay/run1/checkpoint.safetensors"
    base, one = _out(bb), _out(node.load(bb, name, 1.0)[0])
    half = node.load(bb, name, 0.5)[0]
    twice = node.load(half, name, 0.5)[0]  # two adapters, both active
    assert twice.loras == (("checkpoint.safetensors", 0.5), ("checkpoint.safetensors", 0.5))
    assert sorted(twice.denoiser.peft_config) == ["interplay", "interplay_2"]
    assert sorted(half.denoiser.peft_config) == ["interplay"]  # the first output is not changed by the second
    torch.testing.assert_close(_out(twice), one, rtol=0, atol=1e-5)
    # the LoRA delta of a single layer is linear in strength (attention makes the whole model non-linear)
    q = lambda b: b.denoiser.transformer_blocks[0].attn1.to_q(torch.ones(1, bb.denoiser.config.num_attention_heads
                                                                         * bb.denoiser.config.attention_head_dim))
    with torch.no_grad():
        d1, dh = q(node.load(bb, name, 1.0)[0]) - q(bb), q(half) - q(bb)
    assert float(d1.abs().max()) > 1e-4
    torch.testing.assert_close(dh, 0.5 * d1, rtol=0, atol=1e-6)
    assert not torch.allclose(one, base, atol=1e-4)


def test_diffusers_file_without_metadata_in_loras_folder(trained, tmp_path):
    bb, lora_bb, root = trained
    sd = load_file(str(root / "interplay" / "run1" / "checkpoint.safetensors"))
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    # alpha = rank is the diffusers default when a file carries no alpha: scale the B weights to keep the result
    sd = {k: v * (2.0 if k.endswith("lora_B.weight") else 1.0) for k, v in sd.items()}
    save_file(sd, str(models / "loras" / "plain.safetensors"))
    runtime.set_models_root(models)
    assert NL.lora_choices() == ["plain.safetensors"]  # the interplay/ folder of this root is empty
    applied = NL.InterplayLoraLoader().load(bb, "plain.safetensors", 1.0)[0]
    torch.testing.assert_close(_out(applied), _out(lora_bb), rtol=0, atol=1e-5)
    # diffusers' save_lora_weights keeps the peft config: its lora_alpha (4 here) is honoured
    raw = load_file(str(root / "interplay" / "run1" / "checkpoint.safetensors"))
    meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 4, "transformer.r": 2,
                                                 "transformer.alpha_pattern": {}})}
    _write(models, "with_meta.safetensors", raw, meta)
    applied = NL.InterplayLoraLoader().load(bb, "with_meta.safetensors", 1.0)[0]
    torch.testing.assert_close(_out(applied), _out(lora_bb), rtol=0, atol=1e-5)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.alpha_pattern": {"to_q": 8}})}
    _write(models, "pattern.safetensors", raw, meta)
    with pytest.raises(ValueError, match="alpha_pattern/rank_pattern"):
        NL.InterplayLoraLoader().load(bb, "pattern.safetensors", 1.0)


def test_fp8_storage_survives(trained, tiny_cogvideox, tmp_path):
    _, _, root = trained
    fp8 = cvx.load_cogvideox(tiny_cogvideox, dtype="fp8_e4m3fn", device="cpu")
    w = fp8.denoiser.transformer_blocks[0].attn1.to_q.weight
    assert w.dtype == torch.float8_e4m3fn
    runtime.set_models_root(root)
    applied = NL.InterplayLoraLoader().load(fp8, "interplay/run1/checkpoint.safetensors", 1.0)[0]
    assert fp8.denoiser.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    layer = applied.denoiser.transformer_blocks[0].attn1.to_q
    assert layer.base_layer.weight.dtype == torch.float8_e4m3fn and layer.lora_A["interplay"].weight.dtype == fp8.dtype
    assert torch.isfinite(_out(applied)).all()


def _write(models, name, sd, meta=None):
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(sd, str(models / "loras" / name), metadata=meta)


def test_bad_files_are_named(trained, tmp_path):
    bb = trained[0]
    models = tmp_path / "models"
    runtime.set_models_root(models)
    node = NL.InterplayLoraLoader()
    _write(models, "kohya.safetensors", {"lora_unet_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 8)})
    with pytest.raises(ValueError, match="LoRA Loader: LoRA: kohya.safetensors is not in the diffusers/peft LoRA "
                                         "format.*'lora_unet_blocks_0_attn1_to_q.lora_down.weight'"):
        node.load(bb, "kohya.safetensors", 1.0)
    _write(models, "other.safetensors", {"transformer.transformer_blocks.99.attn1.to_q.lora_A.weight": torch.zeros(2, 8),
                                         "transformer.transformer_blocks.99.attn1.to_q.lora_B.weight": torch.zeros(8, 2)})
    with pytest.raises(ValueError, match="1 of the 1 layers other.safetensors adapts do not exist in this cogvideox "
                                         "model.*transformer_blocks.99.attn1.to_q"):
        node.load(bb, "other.safetensors", 1.0)
    width = bb.denoiser.transformer_blocks[0].attn1.to_q.in_features
    _write(models, "wide.safetensors", {"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, width + 8),
                                        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(width, 2)})
    with pytest.raises(ValueError, match="LoRA: wide.safetensors does not fit this model's layer sizes"):
        node.load(bb, "wide.safetensors", 1.0)
    (models / "loras" / "broken.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsFileError, match="LoRA Loader: LoRA: .*broken.safetensors is not a readable"):
        node.load(bb, "broken.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match="LoRA Loader: loras model 'gone.safetensors' not found"):
        node.load(bb, "gone.safetensors", 1.0)
    with pytest.raises(ValueError, match="points outside"):
        node.load(bb, "../x.safetensors", 1.0)
    assert not hasattr(bb.denoiser, "peft_config")  # nothing failed half-way into the source model


def test_lora_task_on_a_backbone_with_a_lora_trains_only_its_own(trained):
    bb, lora_bb, _ = trained
    first = {k: v.clone() for k, v in lora_bb.denoiser.state_dict().items() if "lora_" in k}
    from interplay.models.training.config import build_task

    t = build_task("lora", lora_bb, {"rank": 2, "max_text_length": 8})
    assert t.adapter == "interplay_2"
    own = {id(p) for p in t.trainable_parameters()}
    assert own and all(".interplay_2." in n for n, p in t.denoiser.named_parameters() if id(p) in own)
    assert all(torch.equal(v, first[k]) for k, v in lora_bb.denoiser.state_dict().items() if k in first)
    new = L.lora_state_dict(t.denoiser, "transformer", t.adapter)
    assert new and all(torch.count_nonzero(v) == 0 for k, v in new.items() if k.endswith("lora_B.weight"))


def test_node_declaration():
    it = NL.InterplayLoraLoader.INPUT_TYPES()["required"]
    assert list(it) == ["backbone", "lora", "strength"]
    assert it["strength"][1]["default"] == 1.0 and NL.InterplayLoraLoader.RETURN_TYPES == ("INTERPLAY_BACKBONE",)


def test_svd_unet_lora_from_loras_folder(tmp_path):
    """The loader is family-generic: a diffusers-format UNet LoRA (``unet.`` prefix) on SVD, with offload kept."""
    from interplay.models.backbones import svd

    bb = svd.random_backbone("tiny", seed=0)

    class Base:
        def __init__(self, b):
            pass

    task = L.LoraTask(bb, Base, rank=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in task.trainable_parameters():
            p.normal_(0, 0.05)
    sd = task.trainable_state_dict()
    assert all(k.startswith("unet.") for k in sd) and any(".attn1.to_q.lora_A" in k for k in sd)
    _write(tmp_path / "models", "svd_style.safetensors", sd)
    runtime.set_models_root(tmp_path / "models")
    applied = NL.InterplayLoraLoader().load(bb, "svd_style.safetensors", 1.0)[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, bb.denoiser.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 1, bb.denoiser.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])

    def run(b):
        with torch.no_grad():
            return b.denoiser(x, torch.tensor([1.0]), ctx, ids, return_dict=False)[0]

    torch.testing.assert_close(run(applied), run(task.backbone), rtol=0, atol=1e-6)
    assert not torch.allclose(run(applied), run(bb), atol=1e-5)


def test_new_branch_from_a_lora_backbone_copies_the_frozen_weights(trained, tmp_path):
    """A zero-initialised branch built from a backbone with a LoRA applied copies the same frozen block weights as
    one built from the plain backbone (peft renames them ``base_layer``; missed, they would stay random)."""
    from interplay.models.backbones import svd
    from interplay.models.control.interdyn import InterDynBranch
    from interplay.models.control.kinemask import KineMaskBranch

    bb, _, root = trained
    runtime.set_models_root(root)
    lora_bb = NL.InterplayLoraLoader().load(bb, "interplay/run1/checkpoint.safetensors", 1.0)[0]
    plain = KineMaskBranch.from_transformer(bb.denoiser, num_layers=1).state_dict()
    from_lora = KineMaskBranch.from_transformer(lora_bb.denoiser, num_layers=1).state_dict()
    blocks = [k for k in plain if k.startswith("transformer_blocks.0.attn1.to_")]
    assert len(blocks) >= 4 and all(torch.equal(plain[k], from_lora[k]) for k in blocks)
    assert torch.equal(plain["transformer_blocks.0.attn1.to_q.weight"],
                       bb.denoiser.transformer_blocks[0].attn1.to_q.weight)

    sbb = svd.random_backbone("tiny", seed=0)

    class Base:
        def __init__(self, b):
            pass

    task = L.LoraTask(sbb, Base, rank=2)
    with torch.no_grad():
        for p in task.trainable_parameters():
            p.normal_(0, 0.05)
    a = InterDynBranch.from_unet(sbb.denoiser).state_dict()
    b = InterDynBranch.from_unet(task.backbone.denoiser).state_dict()  # a strict copy: raised before
    down = [k for k in a if k.startswith("down_blocks.")]
    assert down and all(torch.equal(a[k], b[k]) for k in down)
