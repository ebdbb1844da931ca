"""``models.load_pretrained``: the model a weights file fits, built and loaded, for every format.

Foreign formats are written from pytorchvideo's reference SlowFast R50 (4x16: alpha 8, fusion kernel 5; 8x8:
alpha 4, kernel 7) with random values, through the independent name tables of tests/test_weights.py (MMAction2:
tests/test_mmaction.py). The built model must give the reference's logits; this project's checkpoints must
rebuild the model they record.
"""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from models import SlowFastArch, WeightsError, create_model, load_pretrained, model_from_arch
from test_weights import (NUM_CLASSES, assert_same_logits, caffe2_name, own_checkpoint, paddle_name,
                          pyslowfast_name, randomize_, reference_inputs, reference_slowfast, weights_only)

PUBLISHED = {"slowfast_r50_4x16": dict(alpha=8, fusion_kernel=5), "slowfast_r50_8x8": dict(alpha=4, fusion_kernel=7)}


# tiny tensors: OpenMP synchronisation would dominate (the fixture is in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def published(request):
    """(variant name, its settings, pytorchvideo reference R50 with random values)."""
    settings = PUBLISHED[request.param]
    return request.param, settings, reference_slowfast(width=64, beta_inv=8, seed=21, **settings)


def write(fmt, reference, path):
    """``reference``'s weights in ``fmt``, named by that project's rules."""
    state = weights_only(reference.state_dict())
    if fmt == "pytorchvideo":
        torch.save({"model_state": reference.state_dict()}, path)
    elif fmt == "pyslowfast":
        torch.save({"epoch": 196, "model_state": {pyslowfast_name(k): v for k, v in state.items()}}, path)
    elif fmt == "caffe2":
        last_block = {stage: depth - 1 for stage, depth in zip((2, 3, 4, 5), (3, 4, 6, 3))}
        blobs = {caffe2_name(pyslowfast_name(k), last_block): v.numpy() for k, v in state.items()}
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
    elif fmt == "paddlevideo":
        params = {}
        for k, v in state.items():
            name = paddle_name(pyslowfast_name(k))
            params[name] = v.numpy().T.copy() if name == "head.projection.weight" else v.numpy()
        with open(path, "wb") as f:
            pickle.dump(params, f, protocol=4)
    else:
        raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["pytorchvideo", "pyslowfast", "caffe2", "paddlevideo"])
def test_foreign_formats_build_the_published_model(published, fmt, tmp_path):
    name, settings, reference = published
    path = tmp_path / f"weights.{fmt}"
    write(fmt, reference, path)
    model, report = load_pretrained(path)
    assert report.source_format == fmt and report.complete
    assert model.model_name == name and not model.training
    arch = model.arch
    assert (arch.alpha, arch.fusion_kernel, arch.depths, arch.width, arch.beta_inv, arch.num_classes) == (
        settings["alpha"], settings["fusion_kernel"], (3, 4, 6, 3), 64, 8, NUM_CLASSES)
    assert arch.lateral_norm and arch.slow_sampling == "linspace" and arch.head_pooling == "reference"
    assert (arch.input_mean, arch.input_std, arch.train_crop) == ((0.45,) * 3, (0.225,) * 3, 224)
    assert_same_logits(model, reference, alpha=settings["alpha"])
    # the arch it records rebuilds it
    rebuilt = model_from_arch(model.model_name, dataclasses.asdict(arch))
    assert rebuilt.arch == arch


@pytest.mark.parametrize("name", ["slowfast_r50_4x16", "slowfast_r50_8x8", "slowfast_tiny"])
@pytest.mark.parametrize("bare", [False, True], ids=["checkpoint", "bare_state_dict"])
def test_own_checkpoints_and_state_dicts(name, bare, tmp_path):
    overrides = {} if bare else dict(train_crop=256, head_pooling="global", slow_sampling="nearest")
    source = randomize_(create_model(name, num_classes=NUM_CLASSES, **overrides), seed=22).eval()
    path = tmp_path / "ckpt.pt"
    if bare:
        torch.save(source.state_dict(), path)  # no model_args: the shapes tell
    else:
        own_checkpoint(source, path)
    model, report = load_pretrained(path)
    assert report.source_format == "slowfast-dali" and report.complete
    assert model.model_name == name and model.arch == source.arch
    inputs = reference_inputs(source.arch.alpha, size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), source(inputs), rtol=0, atol=0)


def test_own_checkpoint_of_a_custom_architecture_rebuilds_it(tmp_path):
    # the demo's model: beta_inv 2 and time-difference input, which no published model has
    source = randomize_(create_model("slowfast_tiny", num_classes=8, beta_inv=2, fast_time_diff=True), seed=23)
    path = tmp_path / "best.pt"
    own_checkpoint(source.eval(), path)
    model, report = load_pretrained(path)
    assert model.arch == source.arch and report.complete
    torch.save(source.state_dict(), path)  # bare: shapes give everything but alpha
    with pytest.raises(WeightsError, match="alpha=N") as err:
        load_pretrained(path)
    assert "beta_inv=2" in str(err.value) and "fast_time_diff=True" in str(err.value)
    model, _ = load_pretrained(path, alpha=4)
    inputs = reference_inputs(4, size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), source(inputs), rtol=0, atol=0)


def test_pyslowfast_cfg_supplies_alpha_and_training_crop(tmp_path):
    # a reduced R50 (width 8) matches no published model: its alpha can only come from the file's cfg
    reference = reference_slowfast(width=8, beta_inv=4, alpha=4, fusion_kernel=5, seed=24)
    state = {pyslowfast_name(k): v for k, v in reference.state_dict().items()}
    cfg = ("DATA:\n  TRAIN_CROP_SIZE: 256\n  MEAN: [0.45, 0.45, 0.45]\n  STD: [0.225, 0.225, 0.225]\n"
           "MODEL:\n  ARCH: slowfast\n  DROPOUT_RATE: 0.3\nSLOWFAST:\n  ALPHA: 4\n  BETA_INV: 4\n")
    path = tmp_path / "SLOWFAST.pyth"
    torch.save({"epoch": 10, "model_state": state, "cfg": cfg}, path)
    model, report = load_pretrained(path)
    assert (model.arch.alpha, model.arch.train_crop, model.arch.dropout) == (4, 256, 0.3)
    assert model.head.window == 8 and report.complete
    assert_same_logits(model, reference, alpha=4)


def test_another_class_count_gets_a_fresh_classifier(published, tmp_path):
    _, _, reference = published
    path = tmp_path / "ptv.pyth"
    write("pytorchvideo", reference, path)
    model, report = load_pretrained(path, num_classes=5)
    assert model.arch.num_classes == 5 and model.head.proj.out_features == 5
    assert report.reinitialized == ["head.proj.weight", "head.proj.bias"] and not report.mismatched
    assert torch.count_nonzero(model.head.proj.bias) == 0
    same, _ = load_pretrained(path, num_classes=NUM_CLASSES)
    assert same.arch.num_classes == NUM_CLASSES and same.head.proj.weight.std() > 0.02  # loaded, not std 0.01


def test_a_file_that_fits_no_architecture_says_what_was_recognised(tmp_path):
    reference = reference_slowfast(width=8, beta_inv=4, alpha=4, fusion_kernel=5, seed=25)
    state = reference.state_dict()
    # drop the fast pathway's last res4 block: the pathways no longer have the same depth
    state = {k: v for k, v in state.items() if not k.startswith("blocks.3.multipathway_blocks.1.res_blocks.5.")}
    path = tmp_path / "odd.pyth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_pretrained(path)
    message = str(err.value)
    assert "res4 has 6 slow and 5 fast blocks" in message and "format=pytorchvideo" in message
    assert "Fix:" in message

    # a file without the fast pathway is no SlowFast
    no_fast = {k: v for k, v in reference.state_dict().items() if "multipathway_blocks.1" not in k}
    torch.save(no_fast, path)
    with pytest.raises(WeightsError, match="no 'fast_stem.conv.weight'"):
        load_pretrained(path)


def test_unknown_override_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(create_model("slowfast_tiny").state_dict(), path)
    with pytest.raises(WeightsError, match="alhpa"):
        load_pretrained(path, alhpa=4)
    assert "alpha" in {f.name for f in dataclasses.fields(SlowFastArch)}


def test_a_partial_caffe2_file_fits_no_architecture(tmp_path):
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((2, 3, 1, 7, 7), np.float32)}}, f, protocol=2)
    with pytest.raises(WeightsError, match="fits no SlowFast"):
        load_pretrained(path)
