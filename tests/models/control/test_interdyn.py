"""InterDyn branch: zero-init identity, the residual-multiplicity quirk, save/load by name."""
import json

import pytest
import torch

from interplay.models.backbones import svd
from interplay.models.control import interdyn


@pytest.fixture(scope="module")
def bb():
    return svd.random_backbone("tiny", seed=0)


def _inputs(batch=2, frames=4, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, frames, 8, h, w, generator=g),
        timestep=torch.tensor([0.3] * batch),
        ehs=torch.randn(batch, 1, 16, generator=g),
        tids=svd.added_time_ids(6, 40, 0.02, batch),
        control=torch.rand(batch, frames, 3, 8 * h, 8 * w, generator=g) * 2 - 1,
    )


def test_unet_forward_matches_diffusers(bb):
    x = _inputs()
    ref = bb.denoiser(x["sample"], x["timestep"], x["ehs"], x["tids"]).sample
    out = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_multiplicity_by_hand(bb):
    assert svd.residual_multiplicity(bb.denoiser.config) == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
    assert svd.residual_multiplicity(bb.denoiser.config, "once") == [1] * 12

    class Cfg:  # the general rule for another layout: 3 blocks of 1 layer -> skips [conv_in,b0,d0,b1,d1,b2]
        layers_per_block = 1
        block_out_channels = (32, 32, 32)
    assert svd.residual_multiplicity(Cfg) == [3, 3, 3, 2, 2, 1]


def test_branch_shapes_and_zero_init_identity(bb):
    br = interdyn.new_branch(bb.denoiser)
    x = _inputs()
    with torch.no_grad():
        down, mid = br.module(x["sample"], x["timestep"], x["ehs"], x["tids"], x["control"])
    assert len(down) == 12
    # channel/size per skip (tiny: all 32 channels), latent 8x8 -> 8,8,8,4,4,4,2,2,2,1,1,1
    assert [d.shape[-1] for d in down] == [8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]
    assert all(d.shape[0] == 8 for d in down) and mid.shape == (8, 32, 1, 1)
    assert all(float(d.abs().max()) == 0.0 for d in down) and float(mid.abs().max()) == 0.0
    with torch.no_grad():
        enc = br.module.controlnet_cond_embedding(x["control"])
    assert enc.shape == (8, 32, 8, 8) and float(enc.abs().max()) == 0.0
    bare = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"])
    for rule in svd.RESIDUAL_RULES:
        out = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"], down, mid, rule)
        assert torch.equal(out, bare)


def _capture_skips(unet, fn):
    """Run fn() and return the skip tuples the up blocks received, in down order."""
    got = []
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: got.append(kw["res_hidden_states_tuple"]),
                                         with_kwargs=True) for b in unet.up_blocks]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    flat = []
    for t in reversed(got):
        flat.extend(t)
    return flat


@pytest.mark.parametrize("rule", ["quirk", "quirk_loop", "once"])
def test_residual_rule_matches_hand_sums(bb, rule):
    x = _inputs(batch=1, frames=2)
    unet = bb.denoiser
    g = torch.Generator().manual_seed(5)
    plain = _capture_skips(unet, lambda: svd.unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["tids"]))
    res = [torch.randn(s.shape, generator=g) for s in plain]
    mid = torch.randn(2, 32, 1, 1, generator=g)
    got = _capture_skips(unet, lambda: svd.unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["tids"],
                                                        res, mid, rule))
    k = [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1] if rule != "once" else [1] * 12
    for i, (p, r, q) in enumerate(zip(plain, res, got)):
        torch.testing.assert_close(q, p + k[i] * r, rtol=1e-5, atol=1e-5, msg=f"skip {i}")


@torch.no_grad()  # forward passes only
def test_quirk_equals_quirk_loop_output(bb):
    x = _inputs()
    g = torch.Generator().manual_seed(7)
    br = interdyn.new_branch(bb.denoiser)
    for p in br.module.parameters():  # break zero-init so residuals are non-zero
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    down, mid = br.module(x["sample"], x["timestep"], x["ehs"], x["tids"], x["control"])
    assert float(down[0].abs().max()) > 0
    a = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"], down, mid, "quirk")
    b = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"], down, mid, "quirk_loop")
    c = svd.unet_forward(bb.denoiser, x["sample"], x["timestep"], x["ehs"], x["tids"], down, mid, "once")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert float((a - c).abs().max()) > 1e-3
    # the control is used: another mask changes the residuals; scale 0 gives zero residuals
    d2, _ = br.module(x["sample"], x["timestep"], x["ehs"], x["tids"], -x["control"])
    assert float((d2[0] - down[0]).abs().max()) > 1e-4
    d0, m0 = br.module(x["sample"], x["timestep"], x["ehs"], x["tids"], x["control"], conditioning_scale=0.0)
    assert float(d0[3].abs().max()) == 0.0 and float(m0.abs().max()) == 0.0


def test_released_layout_roundtrip(bb, tmp_path):
    br = interdyn.new_branch(bb.denoiser, copy_add_embedding=False)
    g = torch.Generator().manual_seed(3)
    for p in br.module.parameters():
        p.data.add_(0.01 * torch.randn(p.shape, generator=g))
    folder = interdyn.save_branch(br, tmp_path / "controlnet", layout="diffusers")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_class_name"] == "ControlNetSDVModel" and cfg["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    # released names: the condition encoder and the 12 + 1 zero convs
    from safetensors import safe_open
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "controlnet_cond_embedding.conv_out.weight" in keys and "controlnet_mid_block.weight" in keys
    assert "controlnet_down_blocks.11.weight" in keys and "controlnet_down_blocks.12.weight" not in keys
    assert "controlnet_cond_embedding.blocks.5.weight" in keys and "add_embedding.linear_1.weight" in keys
    # a released folder has no rule key: strip it and the default is the quirk
    cfg.pop("interplay_residual_rule")
    (folder / "config.json").write_text(json.dumps(cfg))
    loaded = interdyn.load_branch(folder)
    assert loaded.config["residual_rule"] == "quirk"
    for k, v in br.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v), k
    loaded.config["residual_rule"] = "once"
    again = interdyn.load_branch(interdyn.save_branch(loaded, tmp_path / "b.safetensors"))
    assert again.config["residual_rule"] == "once"
    assert all(torch.equal(again.module.state_dict()[k], v) for k, v in br.module.state_dict().items())


def test_load_rejects_mismatched_keys(bb, tmp_path):
    from safetensors.torch import load_file, save_file
    br = interdyn.new_branch(bb.denoiser)
    folder = interdyn.save_branch(br, tmp_path / "cn", layout="diffusers")
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    sd.pop("controlnet_mid_block.weight")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="missing.*controlnet_mid_block.weight.*unexpected.*extra.weight"):
        interdyn.load_branch(folder)


def test_full_branch_heads_follow_svd():
    # Built on the meta device from the real-size UNet and from its own defaults: SVD's (5, 10, 20, 20), i.e.
    # 64-channel heads in every attention (the reference class's own default, (5, 10, 10, 20), is not used).
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**svd.SVD_UNET_CONFIG)
        from_unet = interdyn.InterDynBranch.from_unet(unet, load_weights_from_unet=False)
        default = interdyn.InterDynBranch()
    for branch in (from_unet, default):
        assert tuple(branch.config.num_attention_heads) == (5, 10, 20, 20)
        attns = [m for m in branch.modules() if type(m).__name__ == "Attention"]
        assert attns and {m.inner_dim // m.heads for m in attns} == {64}


def test_branch_files_hold_only_the_trained_parameters(bb, tmp_path):
    from safetensors import safe_open

    branch = interdyn.new_branch(bb.denoiser)
    names = {n for n, p in branch.module.named_parameters() if p.requires_grad}
    for layout, path in (("file", tmp_path / "b.safetensors"), ("diffusers", tmp_path / "folder")):
        out = interdyn.save_branch(branch, path, layout=layout)
        weights = out / interdyn.WEIGHTS_NAME if out.is_dir() else out
        with safe_open(str(weights), "pt") as f:
            assert set(f.keys()) == names, layout


def test_real_size_branch_file_is_the_sum_of_its_parameters():
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**svd.SVD_UNET_CONFIG)
        m = interdyn.InterDynBranch.from_unet(unet, load_weights_from_unet=False)
    sd = m.state_dict()  # what save_branch writes
    assert set(sd) == {n for n, _ in m.named_parameters()}
    size = sum(t.numel() * t.element_size() for t in sd.values())
    assert size == sum(p.numel() * p.element_size() for p in m.parameters())
    assert 2.72e9 < size < 2.74e9  # the released diffusion_pytorch_model.safetensors (fp32) is 2.73 GB
