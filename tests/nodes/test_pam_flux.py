"""PAM appearance nodes: PAM Flux Convert (released controlnet.bin -> safetensors) -> PAM Flux Loader lists and
loads it by name from models/controlnet; PAM Flux Hint stacks the renderer's first frames into 6-channel hints."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from interplay.models import runtime
from interplay.models.control import pam_flux as PF
from interplay.nodes import graph
from interplay.nodes import pam as nd
from kit.pam_flux import golden_inputs, released_state, xflux_layout


@pytest.fixture
def models(tmp_path):
    (tmp_path / "controlnet").mkdir()
    runtime.set_models_root(tmp_path)
    yield tmp_path
    runtime.set_models_root(None)


def test_convert_then_load_by_name(models):
    sd = released_state()
    torch.save(sd, models / "controlnet" / "pam_appearance.bin")  # the release's pickle, tensors only
    assert "pam_appearance.bin" in nd.InterplayPAMFluxConvert.INPUT_TYPES()["required"]["checkpoint"][0]
    out = nd.InterplayPAMFluxConvert().convert("pam_appearance.bin")
    assert out["result"] == ("pam_appearance.safetensors",) and out["ui"]["text"][0].startswith("wrote")
    assert "pam_appearance.safetensors" in nd.InterplayPAMFluxLoader.INPUT_TYPES()["required"]["controlnet"][0]
    physical, semantic, layout = nd.InterplayPAMFluxLoader().load("pam_appearance.safetensors", "fp32")["result"]
    assert layout.startswith("PAM appearance ControlNets: 2 x XLabs Flux ControlNet (2 double blocks")
    for prefix, net in zip(PF.PREFIXES, (physical, semantic)):  # outside ComfyUI: the bare modules
        assert isinstance(net, PF.XLabsControlNet) and net.dtype == torch.float32
        assert set(net.state_dict()) == set(xflux_layout())
        assert all(torch.equal(v, sd[prefix + k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        assert len(physical(**golden_inputs())["input"]) == 19


def test_loader_names_a_wrong_file_and_the_input(models):
    one = {k[len("controlnet1."):]: v for k, v in released_state().items() if k.startswith("controlnet1.")}
    save_file(one, str(models / "controlnet" / "xlabs_depth.safetensors"))
    with pytest.raises(ValueError, match=r"PAM Flux Loader: .*xlabs_depth.safetensors holds ONE Flux ControlNet.*"
                                         r"'controlnet' = 'xlabs_depth.safetensors'"):
        nd.InterplayPAMFluxLoader().load("xlabs_depth.safetensors", "fp32")
    # the same file as the first of two, with a second: a pair (split releases)
    two = {k[len("controlnet2."):]: v for k, v in released_state().items() if k.startswith("controlnet2.")}
    save_file(two, str(models / "controlnet" / "second.safetensors"))
    _, sem, _ = nd.InterplayPAMFluxLoader().load("xlabs_depth.safetensors", "fp32", "second.safetensors")["result"]
    assert torch.equal(sem.state_dict()["txt_in.weight"], load_file(str(models / "controlnet" / "second.safetensors"))
                       ["txt_in.weight"])


def test_hint_node_stacks_the_renderers_first_frames_in_pams_order():
    g = torch.Generator().manual_seed(0)
    depth, seg, hand = (torch.rand(1, 8, 12, 3, generator=g) for _ in range(3))
    phys, sem = nd.InterplayPAMFluxHint().stack(depth, seg, hand)
    assert phys.shape == sem.shape == (1, 8, 12, 6)
    assert torch.equal(phys[..., :3], depth) and float(phys[..., 3:].abs().max()) == 0  # normal: black
    assert torch.equal(sem[..., :3], hand) and torch.equal(sem[..., 3:], seg)  # cat(hand, seg) as controlnet2
    with pytest.raises(ValueError, match=r"PAM Flux Hint: 'depth' \(1, 8, 12, 3\), 'seg' \(1, 4, 12, 3\)"):
        nd.InterplayPAMFluxHint().stack(depth, seg[:, :4], hand)


def test_declarations():
    for cls in (nd.InterplayPAMFluxLoader, nd.InterplayPAMFluxHint, nd.InterplayPAMFluxConvert):
        assert cls.DESCRIPTION and cls.CATEGORY.startswith("Interplay/")
        spec = graph._input_types(cls)
        for section in spec.values():
            assert all(opts.get("tooltip") for _, opts in section.values())
    assert nd.NODE_DISPLAY_NAME_MAPPINGS["InterplayPAMFluxLoader"] == "PAM Flux Loader (Interplay)"
