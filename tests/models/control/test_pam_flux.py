"""PAM's appearance ControlNets (two 6-channel XLabs Flux ControlNets): a tiny pair saved in the released key
layout (tests/kit/pam_flux.py, written from x-flux's names, not from our module) loads with every key; the forward equals ComfyUI's
own XLabs ControlNetFlux on the same weights (golden residuals, tests/golden/pam_flux/README.md); sizes come from
the header and every shape is checked before a tensor is read; other files are refused by name."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interplay.models import weights as Wt
from interplay.models.control import pam_flux as PF
from kit.pam_flux import golden_inputs, released_state, xflux_layout

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "pam_flux" / "comfyui_residuals.safetensors"
TINY = dict(hidden_size=64, num_heads=2, depth=2, in_channels=64, vec_in_dim=8, context_in_dim=16, mlp_hidden=128,
            hint_channels=6)


@pytest.fixture
def released(tmp_path):
    path = tmp_path / "pam_appearance.safetensors"
    save_file(released_state(), str(path))
    return path


def test_released_layout_loads_every_key_with_sizes_from_the_header(released):
    pair = PF.load_pam_flux(released)
    file = load_file(str(released))
    assert pair.config == dict(TINY, qkv_bias=True, guidance_embed=True)
    for prefix, net in zip(PF.PREFIXES, (pair.physical, pair.semantic)):
        sd = net.state_dict()
        want = {prefix + k for k in xflux_layout()}
        assert {prefix + k for k in sd} == want  # no missing, no unexpected key
        assert all(torch.equal(v, file[prefix + k]) for k, v in sd.items())
        assert not any(p.requires_grad for p in net.parameters())
    assert pair.message.startswith("PAM appearance ControlNets: 2 x XLabs Flux ControlNet (2 double blocks, "
                                   "width 64, 6-channel hints")
    # two files holding one ControlNet each, bare x-flux names: the same pair
    a, b = released.parent / "physical.safetensors", released.parent / "semantic.safetensors"
    for prefix, f in zip(PF.PREFIXES, (a, b)):
        save_file({k[len(prefix):]: v for k, v in file.items() if k.startswith(prefix)}, str(f))
    two = PF.load_pam_flux(a, b)
    assert all(torch.equal(v, pair.semantic.state_dict()[k]) for k, v in two.semantic.state_dict().items())


def test_forward_equals_comfyuis_xlabs_controlnet(released):
    """Golden residuals from ComfyUI 0.3.64's comfy.ldm.flux.controlnet.ControlNetFlux (its first conv made 6-channel)
    on the same weights and inputs; 19 residuals, the two blocks' repeated cyclically as x-flux and ComfyUI do."""
    pair = PF.load_pam_flux(released)
    gold = load_file(str(GOLDEN))
    with torch.no_grad():
        for name, net in zip(PF.NAMES, (pair.physical, pair.semantic)):
            out = net(**golden_inputs())["input"]
            assert len(out) == 19 and all(out[i] is out[i % 2] for i in range(19))
            for i in range(2):
                ref = gold[f"{name}.{i}"]
                assert out[i].shape == ref.shape == (1, 6, 64)
                assert torch.allclose(out[i], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), name
    new = PF.XLabsControlNet(**TINY)  # x-flux's init: zero ControlNet blocks -> zero residuals, whatever the hint
    with torch.no_grad():
        assert all(float(r.abs().max()) == 0 for r in new(**golden_inputs())["input"])


def test_shapes_are_checked_before_any_tensor_is_read(released, tmp_path, monkeypatch):
    reads = []
    real = Wt.read_safetensors
    monkeypatch.setattr(Wt, "read_safetensors", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    bad = load_file(str(released))
    bad["controlnet2.double_blocks.1.txt_mlp.2.weight"] = torch.zeros(64, 96)  # one wrong shape deep inside
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match=r"\(semantic\).*double_blocks\.1\.txt_mlp\.2\.weight: \(64, 96\) "
                                                  r"-> \(64, 128\)"):
        PF.load_pam_flux(tmp_path / "bad.safetensors")
    del bad["controlnet2.double_blocks.1.txt_mlp.2.weight"]
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match="1 missing, e.g. double_blocks.1.txt_mlp.2.weight"):
        PF.load_pam_flux(tmp_path / "missing.safetensors")
    assert reads == []  # refused from the header alone
    PF.load_pam_flux(released)
    assert reads == [released, released]


def test_other_files_are_refused_by_name(released, tmp_path):
    sd = load_file(str(released))
    one = {k[len("controlnet1."):]: v for k, v in sd.items() if k.startswith("controlnet1.")}
    save_file(one, str(tmp_path / "one.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match="holds ONE Flux ControlNet; PAM's appearance stage has two"):
        PF.load_pam_flux(tmp_path / "one.safetensors")
    three = released_state(hint=3)  # a stock 3-channel XLabs pair
    save_file(three, str(tmp_path / "three.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match="hint encoder takes 3 channels; PAM's take 6"):
        PF.load_pam_flux(tmp_path / "three.safetensors")
    save_file({"transformer_blocks_copy.0.attn1.to_q.weight": torch.zeros(4, 4),
               "initial_combine_linear.weight": torch.zeros(4, 20)}, str(tmp_path / "motion.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match="is PAM's motion branch \\(CogVideoX\\).*PAM Branch Loader"):
        PF.load_pam_flux(tmp_path / "motion.safetensors")
    save_file({"model.x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(Wt.WeightsFileError, match="is not PAM's appearance ControlNet file"):
        PF.load_pam_flux(tmp_path / "other.safetensors")
    (tmp_path / "controlnet.bin").write_bytes(b"\x80\x04")
    with pytest.raises(Wt.WeightsFileError, match="controlnet.bin is not a .safetensors file; the pack never "
                                                  "unpickles.*PAM Flux Convert"):
        PF.load_pam_flux(tmp_path / "controlnet.bin")


def test_convert_release_writes_the_safetensors_the_loader_reads(released, tmp_path):
    sd = load_file(str(released))
    torch.save(sd, tmp_path / "controlnet.bin")  # what the release's trainer writes (tensors only)
    out = PF.convert_release(tmp_path / "controlnet.bin", tmp_path / "pam_appearance.safetensors")
    assert load_file(str(out)).keys() == sd.keys()
    assert PF.load_pam_flux(out).config["hint_channels"] == 6
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="other.bin is not PAM's DoubleControl state"):
        PF.convert_release(tmp_path / "other.bin", tmp_path / "x.safetensors")


def test_stack_hint_orders_channels_as_pam():
    depth = torch.full((1, 2, 2, 3), 0.25)
    hint = PF.stack_hint(depth)  # the normal slot black, as in every released run
    assert hint.shape == (1, 2, 2, 6) and torch.equal(hint[..., :3], depth) and float(hint[..., 3:].abs().max()) == 0
    hand, seg = torch.full((1, 2, 2, 3), 0.5), torch.full((1, 2, 2, 3), 1.0)
    assert PF.stack_hint(hand, seg)[0, 0, 0].tolist() == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="one shape"):
        PF.stack_hint(hand, seg[:, :1])
