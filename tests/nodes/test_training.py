"""Training nodes: headless runs into models/interplay/<name>/, resume on re-queue, cancel saves, named errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cvx
from interplay.models.training import trainer as T
from interplay.nodes import training as N

EXTRA = json.dumps({"v": 1, "options": {"num_layers": 1, "max_text_length": 8}})
TRAIN = dict(steps=2, lr=1e-3, batch_size=1, grad_accum=1, precision="fp32", seed=0, checkpoint_every=1,
             resume=True)


@pytest.fixture
def clips(push_clips):
    """The shared clips, linked into this test's input folder (the training nodes read only inside it)."""
    from kit.tiny import _link_or_copy

    dst = runtime.input_directory() / "push"
    _link_or_copy(push_clips, dst)
    return dst


@pytest.fixture
def models(tmp_path):
    runtime.set_models_root(tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture(scope="module")
def bb():
    return cvx.random_backbone("tiny", seed=0)


def _state(bb):
    return {k: v.clone() for k, v in bb.denoiser.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_branch_node_trains_saves_resumes_and_keeps_backbone(bb, clips, models):
    before = _state(bb)
    node = N.InterplayTrainControlBranch()
    out = node.train(bb, str(clips), "km/s1", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    branch, curve, path = out["result"]
    assert path == str(models / "interplay" / "km" / "s1" / T.CHECKPOINT)
    assert branch.kind == "kinemask" and not any(p.requires_grad for p in branch.module.parameters())
    assert curve.shape == (1, 320, 640, 3) and curve.dtype == torch.float32 and 0 <= float(curve.min())
    saved = load_file(path)
    assert all(torch.equal(branch.module.state_dict()[k], v) for k, v in saved.items())
    assert _same(before, bb.denoiser.state_dict())  # the frozen backbone, bit for bit
    assert "2 steps (resumed from 0)" in out["ui"]["text"][0]
    # re-queue: the finished run is returned from its state; more steps continue it
    again = node.train(bb, str(clips), "km/s1", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    assert "resumed from 2" in again["ui"]["text"][0]
    assert _same(load_file(path), saved)
    more = node.train(bb, str(clips), "km/s1", 9, "kinemask_branch", 1, extra=EXTRA, **{**TRAIN, "steps": 3})
    assert "3 steps (resumed from 2)" in more["ui"]["text"][0]
    # stage 2 continues the stage-1 branch without modifying the input object
    s1 = {k: v.clone() for k, v in branch.module.state_dict().items()}
    s2 = node.train(bb, str(clips), "km/s2", 9, "kinemask_branch", 2, branch=branch, extra=EXTRA,
                    **{**TRAIN, "steps": 1})
    assert _same(s1, branch.module.state_dict())
    assert T.read_state(models / "interplay" / "km" / "s2")[1]["task_config"]["stage"] == 2
    assert s2["result"][0].module is not branch.module


def test_cancel_saves_a_checkpoint_then_requeue_resumes(bb, clips, models):
    node = N.InterplayTrainControlBranch()
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        node.train(bb, str(clips), "cancel", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    assert T.read_state(models / "interplay" / "cancel")[1]["step"] == 1
    out = node.train(bb, str(clips), "cancel", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    assert "resumed from 1" in out["ui"]["text"][0]


def test_lora_and_backbone_nodes_leave_the_input_bundle_alone(bb, clips, models):
    before = _state(bb)
    lora_bb, curve, path = N.InterplayTrainLora().train(
        bb, str(clips), "lora", 9, 2, 2.0, "to_q, to_v", extra=json.dumps({"v": 1, "options": {"max_text_length": 8}}),
        **TRAIN)["result"]
    assert any(k.endswith("lora_A.weight") for k in load_file(path))
    assert lora_bb.loras[-1] == (path, 1.0) and bb.loras == ()
    assert type(lora_bb.denoiser.transformer_blocks[0].attn1.to_q).__module__.startswith("peft")
    assert type(bb.denoiser.transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    new_bb, _, path = N.InterplayTrainBackbone().train(
        bb, str(clips), "bb", 9, extra=json.dumps({"v": 1, "options": {"max_text_length": 8}}), **TRAIN)["result"]
    assert new_bb.denoiser is not bb.denoiser and not _same(before, new_bb.denoiser.state_dict())
    assert _same(before, bb.denoiser.state_dict())


def test_relative_dataset_dir_and_named_errors(bb, clips, models, tmp_path):
    import shutil

    shutil.copytree(clips, runtime.output_directory() / "sandbox" / "push")
    assert N.resolve_dataset("X", "sandbox/push") == runtime.output_directory() / "sandbox" / "push"
    node = N.InterplayTrainControlBranch()
    with pytest.raises(FileNotFoundError, match="dataset folder 'nope' not found; searched "):
        node.train(bb, "nope", "x", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    with pytest.raises(ValueError, match="'output_name' '../x' points outside"):
        node.train(bb, str(clips), "../x", 9, "kinemask_branch", 1, extra=EXTRA, **TRAIN)
    with pytest.raises(ValueError, match="task 'interdyn_branch' trains on a svd backbone"):
        node.train(bb, str(clips), "x", 9, "interdyn_branch", 1, extra=EXTRA, **TRAIN)
    with pytest.raises(ValueError, match="'extra' is not JSON"):
        node.train(bb, str(clips), "x", 9, "kinemask_branch", 1, extra="{", **TRAIN)
    with pytest.raises(ValueError, match="unknown key\\(s\\) lrr"):
        node.train(bb, str(clips), "x", 9, "kinemask_branch", 1,
                   extra=json.dumps({"v": 1, "train": {"lrr": 1}}), **TRAIN)
    with pytest.raises(ValueError, match="Train Backbone: the backbone has LoRAs applied \\(style.safetensors\\)"):
        N.InterplayTrainBackbone().train(bb.replace(loras=(("style.safetensors", 1.0),)), str(clips), "x", 9,
                                         extra=EXTRA, **TRAIN)
    assert not (models / "interplay" / "x").exists()


def test_node_declarations():
    for name, cls in N.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("Interplay") and N.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Interplay)")
        assert cls.DESCRIPTION and cls.CATEGORY == "Interplay/training" and cls.OUTPUT_NODE
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for inp, (typ, opts) in group.items():
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"


def test_interdyn_branch_node_writes_a_file_the_interdyn_loader_reads(models, tmp_path):
    from interplay.models.backbones import svd
    from interplay.models.control.interdyn import load_branch
    from interplay.models.sandbox.dataset import write_clip
    from interplay.models.sandbox.presets import generate_scene

    for s in range(2):
        write_clip(generate_scene("push", seed=s, size=(64, 64), frames=4), runtime.output_directory() / "id" / f"c{s}")
    sbb = svd.random_backbone("tiny", seed=0)
    before = _state(sbb)
    branch, curve, path = N.InterplayTrainControlBranch().train(
        sbb, "id", "interdyn", 4, "interdyn_branch", 1, **TRAIN)["result"]
    assert branch.kind == "interdyn" and _same(before, sbb.denoiser.state_dict())
    loaded = load_branch(path)
    assert _same({k: v.float() for k, v in loaded.module.state_dict().items()},
                 {k: v.float() for k, v in branch.module.state_dict().items()})
    assert T.read_state(models / "interplay" / "interdyn")[1]["train_config"]["optimizer"] == "adam"


def test_queued_graph_trains_then_samples_with_the_new_branch(clips, tmp_path):
    """One API-format prompt, run headless: load CogVideoX, train a KineMask branch, sample with it."""
    from kit.tiny import models_root

    from interplay.nodes.graph import execute

    root = models_root(tmp_path / "models")  # private root: the run folder never reaches the shared cache
    runtime.set_models_root(root)
    runtime.set_output_directory(tmp_path / "output")
    drawing = json.dumps({"v": 1, "objects": [{"arrow": {"x0": 8, "y0": 16, "x1": 20, "y1": 16}, "speed": 1.0}]})
    prompt = {
        "1": {"class_type": "InterplaySandboxScene",
              "inputs": {"preset": "push", "seed": 7, "width": 32, "height": 32, "frames": 9, "fps": 8.0}},
        "2": {"class_type": "InterplaySelectFrames", "inputs": {"images": ["1", 0], "start": 0, "count": 1}},
        "3": {"class_type": "InterplaySceneInfo", "inputs": {"scene": ["1", 2], "object_index": 0}},
        "4": {"class_type": "InterplaySelectMasks", "inputs": {"masks": ["3", 0], "start": 0, "count": 1}},
        "5": {"class_type": "InterplayArrowPainter",
              "inputs": {"image": ["2", 0], "drawing": drawing, "num_frames": 9, "v_ref": 1.5, "masks": ["4", 0]}},
        "6": {"class_type": "InterplayCogVideoXLoader",
              "inputs": {"model": "diffusers/tiny_cogvideox", "transformer": "(none)", "vae": "(none)",
                         "text_encoder": "(none)", "weight_dtype": "fp32", "offload": "none", "vae_tiling": False}},
        "7": {"class_type": "InterplayTrainControlBranch",
              "inputs": {"backbone": ["6", 0], "dataset_dir": str(clips), "output_name": "graph_km", "frames": 9,
                         "task": "kinemask_branch", "stage": 1, "extra": EXTRA, **TRAIN}},
        "8": {"class_type": "InterplayInteractionPrompt",
              "inputs": {"template": "c0 (ablation)", "subject": "the box", "surface": "a floor",
                         "direction": "right", "speed": 0.0, "outcome": "none", "extra": ""}},
        "9": {"class_type": "InterplayCogVideoXSampler",
              "inputs": {"backbone": ["6", 0], "image": ["2", 0], "prompt": ["8", 0], "negative": "",
                         "width": 32, "height": 32, "num_frames": 9, "steps": 2, "cfg": 1.0, "dynamic_cfg": False,
                         "scheduler": "ddim", "seed": 0, "decode": True, "control": ["5", 0], "branch": ["7", 0],
                         "control_weight": 0.5, "control_start": 0.0, "control_end": 1.0}},
    }
    outs = execute(prompt, targets=["7", "9"])
    ckpt = root / "interplay" / "graph_km" / T.CHECKPOINT
    assert ckpt.is_file() and "2 steps" in outs.ui["7"]["text"][0]
    branch = outs["7"][0]
    assert branch.kind == "kinemask" and branch.source == str(ckpt)
    assert tuple(outs["7"][1].shape) == (1, 320, 640, 3)
    video = outs["9"][0]
    assert tuple(video.shape) == (9, 32, 32, 3) and 0 <= float(video.min()) <= float(video.max()) <= 1


def test_wrongly_typed_settings_are_named(bb, clips, models):
    node = N.InterplayTrainControlBranch()
    for extra, match in (({"train": {"warmup": "10"}}, "'warmup' must be a whole number; got '10'"),
                         ({"train": {"lr": "fast"}}, "'lr' must be a finite number; got 'fast'"),
                         ({"train": {"betas": "0.9"}}, "'betas' must be a list of numbers"),
                         ({"train": {"ema_decay": None}}, "'ema_decay' must be a finite number; got None"),
                         ({"dataset": {"frames": -1}}, "'frames' must be a whole number >= 1"),
                         ({"dataset": {"size": [-5, 3]}}, r"'size' must be \[H, W\]")):
        with pytest.raises(ValueError, match="Train Control Branch: .*" + match):
            node.train(bb, str(clips), "typed", 9, "kinemask_branch", 1,
                       extra=json.dumps({"v": 1, "options": {"num_layers": 1}, **extra}), **TRAIN)
    from interplay.models.training import config as C

    with pytest.raises(ValueError, match=r"\[train\]: 'steps' must be a whole number; got '10'"):
        C.parse_config({"task": "lora", "out_dir": "x", "backbone": {"random": "tiny"}, "dataset": {"root": "d"},
                        "train": {"steps": "10"}})


def _moved_global_rng(seed):
    torch.manual_seed(seed)
    torch.rand(1000)


def test_one_seed_gives_one_run_whatever_the_global_rng_did(bb, clips, models):
    """Two fresh runs with one seed, the global RNG deliberately moved in between, end with bitwise-identical
    weights: Train LoRA (its A drawn from the run's generator; with LoRA dropout, which draws from the global
    RNG inside the trainer) and Train Control Branch with a new KineMask branch. Another seed gives another run,
    and the caller's global RNG is left where it was."""
    def lora(name, seed):
        extra = json.dumps({"v": 1, "options": {"max_text_length": 8, "dropout": 0.1}})
        out = N.InterplayTrainLora().train(bb, str(clips), name, 9, 2, 4.0, "to_q,to_v", extra=extra,
                                           **{**TRAIN, "steps": 3, "seed": seed})
        return load_file(out["result"][2])

    def branch(name, seed):
        out = N.InterplayTrainControlBranch().train(bb, str(clips), name, 9, "kinemask_branch", 1, extra=EXTRA,
                                                    **{**TRAIN, "steps": 3, "seed": seed})
        return load_file(out["result"][2])

    for run in (lora, branch):
        _moved_global_rng(123)
        a = run(f"{run.__name__}_a", 7)
        _moved_global_rng(999)
        state = torch.get_rng_state()
        b = run(f"{run.__name__}_b", 7)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run.__name__
        assert torch.equal(torch.get_rng_state(), state), "the trainer moved the caller's global RNG"
        c = run(f"{run.__name__}_c", 8)
        assert any(not torch.equal(a[k], c[k]) for k in a), f"{run.__name__}: seed 8 gave seed 7's weights"


def test_new_branches_do_not_depend_on_the_global_rng():
    from interplay.models.backbones import svd
    from interplay.models.backbones.base import init_generator
    from interplay.models.control import interdyn, kinemask

    cbb, sbb = cvx.random_backbone("tiny", seed=0), svd.random_backbone("tiny", seed=0)
    for make in (lambda g: kinemask.new_branch(cbb.denoiser, num_layers=1, downscale=4, generator=g),
                 lambda g: interdyn.new_branch(sbb.denoiser, generator=g)):
        _moved_global_rng(1)
        a = make(init_generator(3)).module.state_dict()
        _moved_global_rng(2)
        b = make(init_generator(3)).module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        c = make(init_generator(4)).module.state_dict()
        assert any(not torch.equal(a[k], c[k]) for k in a)
        assert all(float(v.abs().sum()) == 0 for k, v in a.items()  # zero convs / out projections stay zero
                   if k.startswith(("out_projs.", "controlnet_down_blocks.", "controlnet_mid_block.",
                                    "controlnet_cond_embedding.conv_out.")))
