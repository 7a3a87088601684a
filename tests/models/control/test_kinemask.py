"""KineMask branch: time compression values, frame-0 separation, zero-init == backbone, save/load identity,
state-dict compatibility with the public CogVideoX ControlNet layout."""
import json

import pytest
import torch

from interplay.models.backbones import cogvideox as cog
from interplay.models.control import kinemask as km


def model_forward(bb, x, t, e, branch=None, control=None, weight=1.0):
    """The CogVideoX family forward, with the branch attached through the contract when given."""
    mod = getattr(branch, "module", branch)
    atts = [] if mod is None else [km.KineMaskAttachment(mod, [(control, weight, 0.0, 1.0)], reuse=False)]
    return cog.forward(bb, x, t, e, attachments=atts)


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 8, 8, 8, generator=g), torch.tensor([600, 600]), torch.randn(2, 7, 32, generator=g),
            torch.rand(1, 9, 3, 32, 32, generator=g) * 2 - 1)


def _randomise_out(branch, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in branch.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.2)
    return branch


def test_compress_time_hand_values():
    x = torch.arange(9.0).view(9, 1, 1, 1)  # frame i holds i
    once = km._compress_time(x, 9)
    assert once.flatten().tolist() == [0.0, 1.5, 3.5, 5.5, 7.5]
    twice = km._compress_time(once, 5)
    assert twice.flatten().tolist() == [0.0, 2.5, 6.5]
    assert km._compress_time(torch.arange(4.0).view(4, 1, 1, 1), 4).flatten().tolist() == [0.5, 2.5]
    assert km.compressed_frames(49) == 13 and km.compressed_frames(9) == 3


def test_control_encoder_mirrors_the_vae_time_compression():
    assert [km.time_halvings(t) for t in (1, 2, 4)] == [0, 1, 2]
    assert km.compressed_frames(9, 2) == 5 and km.compressed_frames(9, 1) == 9
    with pytest.raises(ValueError, match="temporal_compression_ratio must be 1, 2 or 4"):
        km.KineMaskBranch(num_attention_heads=2, attention_head_dim=8, vae_channels=4, downscale_coef=4,
                          time_embed_dim=16, num_layers=1, text_embed_dim=8, temporal_compression_ratio=3)
    ctrl = torch.zeros(1, 9, 3, 32, 32)
    ctrl[:, 1:3] = 0.5  # frames 1 and 2 only: one latent frame (1) at 2x, mixed into latent frame 1 at 4x too
    for t, f in ((4, 3), (2, 5)):
        br = km.KineMaskBranch(num_attention_heads=2, attention_head_dim=8, vae_channels=4, downscale_coef=4,
                               time_embed_dim=16, num_layers=1, text_embed_dim=8, sample_width=8, sample_height=8,
                               sample_frames=9, temporal_compression_ratio=t, use_rotary_positional_embeddings=True)
        with torch.no_grad():
            on, off = br.encode_control(ctrl), br.encode_control(torch.zeros_like(ctrl))
        assert on.shape == (1, f, 12, 8, 8)
        moved = [i for i in range(f) if not torch.equal(on[:, i], off[:, i])]
        assert moved == [1], (t, moved)


def test_first_frame_control_stays_in_latent_frame_0(bb):
    br = km.KineMaskBranch.from_transformer(bb.denoiser, num_layers=1, downscale=4)
    ctrl = torch.zeros(1, 9, 3, 32, 32)
    ctrl[:, 0, 0, 8:16, 8:24] = 0.8  # x velocity on the object, frame 0 only
    with torch.no_grad():
        f_ctrl = br.encode_control(ctrl)
        f_zero = br.encode_control(torch.zeros_like(ctrl))
    assert f_ctrl.shape == (1, 3, 48 // 4, 8, 8)  # 3 * 4^2 / 4 channels at the latent grid
    assert torch.equal(f_ctrl[:, 1:], f_zero[:, 1:])
    assert not torch.equal(f_ctrl[:, 0], f_zero[:, 0])


def test_from_transformer_copies_blocks_and_zero_inits_outputs(bb):
    br = km.KineMaskBranch.from_transformer(bb.denoiser, num_layers=2, downscale=4)
    src = bb.denoiser.transformer_blocks[1].state_dict()
    for k, v in br.transformer_blocks[1].state_dict().items():
        assert torch.equal(v, src[k]), k
    assert torch.equal(br.patch_embed.text_proj.weight, bb.denoiser.patch_embed.text_proj.weight)
    assert torch.equal(br.time_embedding.linear_1.weight, bb.denoiser.time_embedding.linear_1.weight)
    w = br.patch_embed.proj.weight
    assert w.shape[1] == 4 + 12 and torch.equal(w[:, :4], bb.denoiser.patch_embed.proj.weight[:, :4])
    assert all(torch.count_nonzero(p) == 0 for p in br.out_projs.parameters())
    with pytest.raises(ValueError, match="exceeds the backbone's 2 blocks"):
        km.KineMaskBranch.from_transformer(bb.denoiser, num_layers=3, downscale=4)


def test_zero_init_branch_equals_backbone(bb):
    x, t, e, ctrl = _inputs()
    branch = km.new_branch(bb.denoiser, num_layers=2, downscale=4)
    with torch.no_grad():
        bare = model_forward(bb, x, t, e)
        res = branch.module(x, ctrl, e, t, rotary=cog.rotary_embeddings(bb.denoiser.config, 3, 8, 8))
        ctl = model_forward(bb, x, t, e, branch=branch, control=ctrl, weight=0.5)
    assert len(res) == 2 and res[0].shape == (2, 3 * 4 * 4, 32)
    assert all(torch.count_nonzero(r) == 0 for r in res)
    assert torch.equal(bare, ctl)


def test_residual_added_after_block_i_times_weight(bb):
    """Hand-built check: with one branch block, the backbone's block-0 output gets + w * residual."""
    x, t, e, ctrl = _inputs(2)
    branch = _randomise_out(km.new_branch(bb.denoiser, num_layers=1, downscale=4).module)
    tr = bb.denoiser
    rot = cog.rotary_embeddings(tr.config, 3, 8, 8)
    with torch.no_grad():
        res = branch(x, ctrl, e, t, rotary=rot)
        emb = tr.time_embedding(tr.time_proj(t))
        hs = tr.patch_embed(e, x)
        enc, hs = hs[:, :7], hs[:, 7:]
        hs, enc = tr.transformer_blocks[0](hs, enc, emb, rot)
        hs = hs + 0.5 * res[0]
        hs, enc = tr.transformer_blocks[1](hs, enc, emb, rot)
        out = tr.proj_out(tr.norm_out(tr.norm_final(hs), temb=emb))
        out = out.reshape(2, 3, 4, 4, -1, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        got = model_forward(bb, x, t, e, branch=branch, control=ctrl, weight=0.5)
        bare = model_forward(bb, x, t, e)
        zero_w = model_forward(bb, x, t, e, branch=branch, control=ctrl, weight=0.0)
    torch.testing.assert_close(got, out, rtol=1e-5, atol=1e-5)
    assert (got - bare).abs().max() > 1e-3
    assert torch.equal(zero_w, bare)


def test_save_load_identity(bb, tmp_path):
    branch = km.new_branch(bb.denoiser, num_layers=2, downscale=4)
    _randomise_out(branch.module)
    path = km.save_branch(branch, tmp_path / "kinemask.safetensors")
    got = km.load_branch(path)
    assert got.kind == "kinemask" and got.family == "cogvideox" and got.source == str(path)
    sa, sb = branch.module.state_dict(), got.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x, t, e, ctrl = _inputs(3)
    with torch.no_grad():
        a = model_forward(bb, x, t, e, branch=branch, control=ctrl, weight=0.5)
        b = model_forward(bb, x, t, e, branch=got, control=ctrl, weight=0.5)
    assert torch.equal(a, b)
    # a file without metadata: config inferred from shapes gives the same module
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in sa.items()}, str(bare))
    got2 = km.load_branch(bare)
    assert got2.module.config.downscale_coef == 4 and got2.module.config.num_layers == 2
    assert got2.module.config.out_proj and all(torch.equal(sa[k], got2.module.state_dict()[k]) for k in sa)


EXPECTED_5B = {  # CogVideoXControlnet(num_attention_heads=48, vae_channels=16, downscale_coef=8, num_layers=8)
    "controlnet_encode_first.0.weight": (96, 192, 1, 1), "controlnet_encode_first.0.bias": (96,),
    "controlnet_encode_first.1.weight": (96,), "controlnet_encode_first.1.bias": (96,),
    "controlnet_encode_second.0.weight": (48, 96, 1, 1), "controlnet_encode_second.1.bias": (48,),
    "patch_embed.proj.weight": (3072, 64, 2, 2), "patch_embed.proj.bias": (3072,),
    "patch_embed.text_proj.weight": (3072, 4096), "time_embedding.linear_1.weight": (512, 3072),
    "time_embedding.linear_2.weight": (512, 512), "transformer_blocks.0.norm1.linear.weight": (18432, 512),
    "transformer_blocks.7.attn1.to_q.weight": (3072, 3072), "transformer_blocks.7.attn1.norm_k.weight": (64,),
    "transformer_blocks.7.ff.net.0.proj.weight": (12288, 3072), "transformer_blocks.7.ff.net.2.weight": (3072, 12288),
}
PUBLIC_PREFIXES = ("controlnet_encode_first.", "controlnet_encode_second.", "patch_embed.", "time_embedding.",
                   "transformer_blocks.")


def test_state_dict_matches_public_cogvideox_controlnet_layout():
    with torch.device("meta"):
        m = km.KineMaskBranch(num_attention_heads=48, attention_head_dim=64, vae_channels=16, downscale_coef=8,
                              num_layers=8, use_rotary_positional_embeddings=True, out_proj=False)
    sd = m.state_dict()
    for k, shape in EXPECTED_5B.items():
        assert tuple(sd[k].shape) == shape, k
    assert all(k.startswith(PUBLIC_PREFIXES) for k in sd)
    assert not any(k.startswith("transformer_blocks.8.") for k in sd)
    with torch.device("meta"):
        ours = km.KineMaskBranch(num_attention_heads=48, attention_head_dim=64, vae_channels=16,
                                 downscale_coef=8, num_layers=8, use_rotary_positional_embeddings=True)
    extra = set(ours.state_dict()) - set(sd)
    assert extra == {f"out_projs.{i}.{p}" for i in range(8) for p in ("weight", "bias")}


def test_load_public_style_folder_adds_directly(bb, tmp_path):
    """A diffusers folder like the public checkpoints (config.json of CogVideoXControlnet, no out_projs)."""
    from safetensors.torch import save_file

    ref = km.KineMaskBranch.from_transformer(bb.denoiser, num_layers=1, downscale=4, out_proj=False)
    folder = tmp_path / "cogvideox-controlnet"
    folder.mkdir()
    cfg = {k: v for k, v in dict(ref.config).items() if k not in ("out_proj", "text_embed_dim")}
    cfg["_class_name"] = "CogVideoXControlnet"
    # text_embed_dim is not a public config key (the public class is fixed at 4096): ours must come from shapes
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    got = km.load_branch(folder)
    assert got.module.out_projs is None and got.module.config.text_embed_dim == 32
    x, t, e, ctrl = _inputs(4)
    rot = cog.rotary_embeddings(bb.denoiser.config, 3, 8, 8)
    with torch.no_grad():
        res = got.module(x, ctrl, e, t, rotary=rot)
        h = ref(x, ctrl, e, t, rotary=rot)
    assert torch.equal(res[0], h[0]) and res[0].abs().sum() > 0


def test_control_size_mismatch_names_both(bb):
    x, t, e, _ = _inputs()
    br = km.KineMaskBranch.from_transformer(bb.denoiser, num_layers=1, downscale=4)
    with pytest.raises(ValueError, match=r"control encodes to 5 frames .* latent has 3 frames"):
        br(x, torch.zeros(1, 17, 3, 32, 32), e, t)


def _param_names(m) -> set:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_branch_files_hold_only_the_trained_parameters(bb, tmp_path):
    # the file written by save_branch and the trainer's checkpoint: exactly the branch's trainable parameters
    from safetensors import safe_open

    from interplay.models.training.kinemask import KineMaskTask

    branch = km.new_branch(bb.denoiser, num_layers=2, downscale=4)
    path = km.save_branch(branch, tmp_path / "kinemask.safetensors")
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == _param_names(branch.module)
    task = KineMaskTask(bb, num_layers=1, downscale=4)
    assert set(task.trainable_state_dict()) == _param_names(task.branch.module)


def _learned_positions_backbone(bb):
    # the tiny transformer with a learned positional table, as CogVideoX-5B-I2V has, filled with values that are
    # not the sin-cos ones a fresh module computes (the release's table was trained)
    from diffusers import CogVideoXTransformer3DModel
    from kit.tiny import COGVIDEOX_TRANSFORMER

    torch.manual_seed(3)
    tr = CogVideoXTransformer3DModel(**dict(COGVIDEOX_TRANSFORMER, use_learned_positional_embeddings=True)).eval()
    with torch.no_grad():
        tr.patch_embed.pos_embedding.normal_(0, 0.5)
    return bb.replace(denoiser=tr.requires_grad_(False))


def test_learned_positional_table_comes_from_the_backbone(bb, tmp_path):
    lbb = _learned_positions_backbone(bb)
    branch = km.new_branch(lbb.denoiser, num_layers=1, downscale=4)
    _randomise_out(branch.module)
    assert "patch_embed.pos_embedding" in branch.module.state_dict()  # a persistent buffer of the module
    path = km.save_branch(branch, tmp_path / "learned.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == _param_names(branch.module)
    got = km.load_branch(path)
    table = lbb.denoiser.patch_embed.pos_embedding
    assert not torch.equal(got.module.patch_embed.pos_embedding, table)  # the loader's own (sin-cos) table
    x, t, _, ctrl = _inputs(4)
    e = torch.randn(2, 226, 32, generator=torch.Generator().manual_seed(5))  # a learned table fixes the text length
    with torch.no_grad():
        a = model_forward(lbb, x, t, e, branch=branch, control=ctrl, weight=0.7)
        b = model_forward(lbb, x, t, e, branch=got, control=ctrl, weight=0.7)
    assert got.module.patch_embed.pos_embedding is table  # shared with the backbone, not copied
    assert torch.equal(a, b)
    # the sampler's path for several controls (the branch inside a summing wrapper) reads the same table
    from interplay.models.control.base import ControlSignal
    from interplay.models.sampling.cogvideox import sample_cogvideox

    got = km.load_branch(path)
    v = torch.zeros(9, 32, 32, 3)
    v[0, 8:20, 8:20, 0] = 0.9
    sigs = [ControlSignal(video=v, kind="velocity", weight=0.5), ControlSignal(video=-v, kind="velocity", weight=0.3)]
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(6))
    kw = dict(num_frames=9, steps=2, seed=1, cfg=1.0, controls=sigs)
    one = sample_cogvideox(lbb, image, e[:1], branch=branch, **kw)
    two = sample_cogvideox(lbb, image, e[:1], branch=got, **kw)
    assert got.module.patch_embed.pos_embedding is table and torch.equal(one, two)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_real_size_branch_file_is_the_sum_of_its_parameters():
    # KineMask's 8-block branch on CogVideoX-5B-I2V, on the meta device (sizes only, nothing allocated)
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        tr = CogVideoXTransformer3DModel(**cog.COGVIDEOX_5B_I2V).to(torch.bfloat16)
        m = km.KineMaskBranch.from_transformer(tr, num_layers=8, init_blocks=False)
    saved = km.branch_state_dict(m)
    assert set(saved) == _param_names(m)
    assert _nbytes(saved.values()) == _nbytes(m.parameters())
    table = m.state_dict()["patch_embed.pos_embedding"]  # left out: 226 text + 13 x 30 x 45 video positions
    assert tuple(table.shape) == (1, 226 + 13 * 30 * 45, 3072) and _nbytes([table]) == 109_215_744
    assert _nbytes(m.state_dict().values()) - _nbytes(saved.values()) == 109_215_744
