"""Demo Model Loader: loads the committed demo model through the user-facing loaders, in the dtype asked for;
a missing model names the files and the rebuild command."""
import json
import logging

import pytest
import torch

from interplay.models.demo import build as B
from interplay.models.demo import configs as C
from interplay.nodes.demo import InterplayDemoModelLoader


def test_loads_the_embedded_model_as_recorded():
    info = json.loads((C.DEMO_ROOT / "demo_config.json").read_text())
    bb, br = InterplayDemoModelLoader().load("fp32")
    assert bb.family == "cogvideox" and bb.dtype == torch.float32
    cfg = info["config"]
    assert bb.denoiser.config.max_text_seq_length == cfg["max_text_len"]
    assert br.module.config.num_layers == cfg["branch_layers"]
    # the VAE, the transformer and the branch's control encoder agree on the time compression
    assert bb.vae.config.temporal_compression_ratio == cfg["vae_temporal"] == bb.extra["vae_scale_factor_temporal"]
    assert br.module.config.temporal_compression_ratio == cfg["vae_temporal"]
    assert abs(bb.extra["scaling_factor"] - info["vae_scaling_factor"]) < 1e-3
    assert all(p.dtype == torch.float32 for p in br.module.parameters())
    # the branch is trained: its zero-initialised output projections are not zero any more
    assert max(float(lin.weight.abs().max()) for lin in br.module.out_projs) > 0
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)  # diffusers logs there and does not propagate
    try:
        bb16, br16 = InterplayDemoModelLoader().load("bf16")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert bb16.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in br16.module.parameters())
    # casting the branch to bf16 must not print diffusers' "should be kept in float32" warning to the console
    assert not [r for r in records if "float32" in r.getMessage()]


def test_missing_model_names_files_and_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cogvideox_push/ and kinemask_push.safetensors.*demo.build"):
        B.load_demo(tmp_path)
