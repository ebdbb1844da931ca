"""Weight importers, proven against pytorchvideo's reference SlowFast.

The reference network (``pytorchvideo.models.slowfast.create_slowfast``) gets random values in every
parameter and BN buffer. Each foreign format is written from its state dict with that project's naming
rules, spelled out independently below (from PySlowFast's ``video_model_builder.py`` / ``resnet_helper.py``
/ ``c2_model_loading.py`` and PaddleVideo's ``resnet_slowfast.py`` / ``slowfast_head.py``), never by calling
``models.weights`` in reverse. Loading the file into our model must reproduce the reference logits.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import CHECKPOINT_FORMAT, WeightsError, create_model, load_weights
from pytorchvideo_reference import import_pytorchvideo_slowfast  # tests/pytorchvideo_reference.py

NUM_CLASSES = 10
# A reduced R50 (all 3-4-6-3 blocks, width 8, beta_inv 4, alpha 4, fusion kernel 5): every naming rule
# (multi-block stages, shortcuts, four fusions) at a fraction of the cost.
SMALL = dict(width=8, beta_inv=4, alpha=4, fusion_kernel=5)


# tiny tensors: OpenMP synchronisation would dominate (the fixture is in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Distinct random values everywhere, scaled so activations stay O(1) through the depth."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            elif tensor.dim() == 1:  # BN gamma
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:  # conv / linear weight
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (1.0 / fan_in) ** 0.5)
    return model


def reference_slowfast(*, width=8, beta_inv=4, alpha=4, fusion_kernel=5, seed=0, depth=50,
                       test_head_frames=None) -> nn.Module:
    """pytorchvideo's SlowFast with random values. Its head is global average pooling (as ours up to the
    training crop); with ``test_head_frames=(slow T, fast T)`` it is PySlowFast's test-time head instead: average
    pools of (T, 7, 7) at stride 1 (the 224 training crop's window), per-position softmax, mean over positions."""
    create_slowfast = import_pytorchvideo_slowfast()
    head = dict(head_pool=nn.AdaptiveAvgPool3d)
    if test_head_frames is not None:
        head = dict(head_pool=nn.AvgPool3d, head_pool_kernel_sizes=tuple((t, 7, 7) for t in test_head_frames),
                    head_activation=nn.Softmax)
    model = create_slowfast(model_depth=depth, model_num_class=NUM_CLASSES,
                            slowfast_channel_reduction_ratio=(beta_inv,),
                            stem_dim_outs=(width, width // beta_inv),
                            slowfast_fusion_conv_kernel_size=(fusion_kernel, 1, 1),
                            slowfast_fusion_conv_stride=(alpha, 1, 1), **head)
    return randomize_(model, seed).eval()


def reference_inputs(alpha, seed=1, size=32, slow_frames=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, slow_frames, size, size, generator=g),
            torch.randn(2, 3, slow_frames * alpha, size, size, generator=g)]


def assert_same_logits(ours: nn.Module, reference: nn.Module, alpha: int):
    inputs = reference_inputs(alpha)
    with torch.no_grad():
        expected = reference([x.clone() for x in inputs])
        got = ours.eval()(inputs)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-5, f"logits differ from the reference by {rel:.2e} (relative)"


@pytest.fixture(scope="module")
def reference():
    return reference_slowfast(**SMALL)


def small_model(num_classes=NUM_CLASSES, **overrides):
    return create_model("slowfast_r50_8x8", num_classes=num_classes, **{**SMALL, **overrides})


# --- independent name tables: pytorchvideo -> PySlowFast -> PaddleVideo / Caffe2 ----------------------------

# Leaf modules of a pytorchvideo ResBlock and their PySlowFast names (resnet_helper.py: ResBlock and
# BottleneckTransform).
PTV_TO_PYSLOWFAST_BLOCK = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn",
                           "branch2.conv_a": "branch2.a", "branch2.norm_a": "branch2.a_bn",
                           "branch2.conv_b": "branch2.b", "branch2.norm_b": "branch2.b_bn",
                           "branch2.conv_c": "branch2.c", "branch2.norm_c": "branch2.c_bn"}


def pyslowfast_name(ptv: str) -> str:
    """pytorchvideo name -> PySlowFast name (s1 = stem, s2..s5 = res2..res5, s{k}_fuse, head.projection)."""
    parts = ptv.split(".")
    if parts[0] == "blocks" and parts[1] == "6":
        return "head.projection." + parts[-1]
    stage = int(parts[1]) + 1
    if parts[2] == "multipathway_fusion":
        module = {"conv_fast_to_slow": "conv_f2s", "norm": "bn"}[parts[3]]
        return f"s{stage}_fuse.{module}.{parts[4]}"
    pathway = parts[3]
    if stage == 1:
        module = {"conv": "conv", "norm": "bn"}[parts[4]]
        return f"s1.pathway{pathway}_stem.{module}.{parts[5]}"
    block, leaf, param = parts[5], ".".join(parts[6:-1]), parts[-1]
    return f"s{stage}.pathway{pathway}_res{block}.{PTV_TO_PYSLOWFAST_BLOCK[leaf]}.{param}"


def paddle_name(pyslowfast: str) -> str:
    """PySlowFast name -> PaddleVideo Recognizer3D name (ResNetBasicStem._conv/_bn,
    FuseFastToSlow._conv_f2s/_bn, BatchNorm3D _mean/_variance, 'backbone.' prefix; the head keeps
    'head.projection')."""
    name = re.sub(r"^(s1\.pathway\d_stem)\.conv\.", r"\1._conv.", pyslowfast)
    name = re.sub(r"^(s1\.pathway\d_stem)\.bn\.", r"\1._bn.", name)
    name = re.sub(r"^(s\d_fuse)\.conv_f2s\.", r"\1._conv_f2s.", name)
    name = re.sub(r"^(s\d_fuse)\.bn\.", r"\1._bn.", name)
    name = name.replace(".running_mean", "._mean").replace(".running_var", "._variance")
    return name if name.startswith("head.") else "backbone." + name


C2_BN_SUFFIX = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def caffe2_name(pyslowfast: str, last_block: dict[int, int]) -> str:
    """PySlowFast name -> Caffe2 blob name (the SlowFast C2 model zoo's scheme: 't_' for the fast pathway,
    res{stage}_{block}_branch2{a,b,c}, fusions named after the fast blob they read, pred_ for the
    classifier)."""
    param = pyslowfast.rsplit(".", 1)[1]
    bn = C2_BN_SUFFIX[param]
    if pyslowfast.startswith("head.projection."):
        return "pred_" + {"weight": "w", "bias": "b"}[param]
    m = re.match(r"s1\.pathway(\d)_stem\.(conv|bn)\.", pyslowfast)
    if m:
        fast = "t_" if m.group(1) == "1" else ""
        return f"{fast}conv1_w" if m.group(2) == "conv" else f"{fast}res_conv1_bn_{bn}"
    m = re.match(r"s(\d)_fuse\.(conv_f2s|bn)\.", pyslowfast)
    if m:
        stage = int(m.group(1))
        last_fast_blob = f"t_res{stage}_{last_block.get(stage)}_branch2c_bn"
        base = "t_pool1_subsample" if stage == 1 else f"{last_fast_blob}_subsample"
        return f"{base}_w" if m.group(2) == "conv_f2s" else f"{base}_bn_{bn}"
    m = re.match(r"s(\d)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])(_bn)?)\.", pyslowfast)
    stage, fast, block = m.group(1), "t_" if m.group(2) == "1" else "", m.group(3)
    prefix = f"{fast}res{stage}_{block}"
    if m.group(4) == "branch1":
        return f"{prefix}_branch1_w"
    if m.group(4) == "branch1_bn":
        return f"{prefix}_branch1_bn_{bn}"
    letter = m.group(5)
    return f"{prefix}_branch2{letter}_bn_{bn}" if m.group(6) else f"{prefix}_branch2{letter}_w"


def weights_only(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


# --- formats ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "hub_model_state"])
def test_pytorchvideo_state_dict_reproduces_reference_logits(reference, tmp_path, wrapped):
    state = reference.state_dict()
    path = tmp_path / "slowfast_ptv.pyth"
    torch.save({"model_state": state} if wrapped else state, path)
    model = small_model()
    report = load_weights(model, path)
    assert report.source_format == "pytorchvideo" and report.complete
    assert len(report.loaded) == len(state)
    assert_same_logits(model, reference, alpha=SMALL["alpha"])


def test_full_r50_8x8_matches_pytorchvideo_reference(tmp_path):
    # pytorchvideo's create_slowfast defaults are SlowFast R50 8x8 (alpha 4, fusion kernel 7).
    reference = reference_slowfast(width=64, beta_inv=8, alpha=4, fusion_kernel=7, seed=3)
    path = tmp_path / "r50_8x8.pyth"
    torch.save(reference.state_dict(), path)
    model = create_model("slowfast_r50_8x8", num_classes=NUM_CLASSES)
    assert load_weights(model, path).complete
    assert_same_logits(model, reference, alpha=4)


def test_test_time_head_at_256_matches_pyslowfast_head_in_pytorchvideo(tmp_path):
    # pytorchvideo's create_slowfast with PySlowFast's test head: (T, 7, 7) pools at stride 1 -> 2x2 positions
    # at 256, softmax per position, mean. Our model trained at 224 (the default train_crop) must give the same
    # probabilities after the evaluator's softmax, and exactly the global-pool logits at 224.
    reference = reference_slowfast(**SMALL, seed=7, test_head_frames=(2, 2 * SMALL["alpha"]))
    path = tmp_path / "ptv.pyth"
    torch.save(reference.state_dict(), path)
    model = small_model()
    assert model.arch.train_crop == 224 and model.arch.head_pooling == "reference"
    assert load_weights(model, path).complete
    model.eval()
    pooled = {}  # the reference's concatenated pathway pools, (N, C, 1, P, P)
    reference.blocks[5].register_forward_hook(lambda m, i, out: pooled.__setitem__("features", out))
    for size in (256, 224):
        inputs = reference_inputs(SMALL["alpha"], size=size)
        with torch.no_grad():
            expected = reference([x.clone() for x in inputs])  # probabilities
            got = model(inputs)
        assert pooled["features"].shape[2:] == ((1, 2, 2) if size == 256 else (1, 1, 1))
        assert model.returns_log_probs(size, size) == (size == 256)
        torch.testing.assert_close(torch.softmax(got, dim=1), expected, rtol=1e-5, atol=1e-7)
    # at 224 the output is the logits of global pooling: the reference's head projection of the mean features
    with torch.no_grad():
        logits = reference.blocks[6].proj(pooled["features"].flatten(1))
    rel = ((got - logits).norm() / logits.norm()).item()
    assert rel < 1e-5


def test_pyslowfast_pyth_reproduces_reference_logits(reference, tmp_path):
    state = {pyslowfast_name(k): v for k, v in reference.state_dict().items()}
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    # PySlowFast's checkpoint dict (slowfast/utils/checkpoint.py save_checkpoint).
    torch.save({"epoch": 196, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "MODEL:\n  ARCH: slowfast\n"}, path)
    model = small_model()
    report = load_weights(model, path)
    assert report.source_format == "pyslowfast" and report.complete
    assert_same_logits(model, reference, alpha=SMALL["alpha"])


@pytest.mark.parametrize("writer", ["pickle", "torch_save"])
def test_caffe2_pkl_reproduces_reference_logits(reference, tmp_path, writer):
    last_block = {stage: depth - 1 for stage, depth in zip((2, 3, 4, 5), (3, 4, 6, 3))}
    blobs = {caffe2_name(pyslowfast_name(k), last_block): v.numpy()
             for k, v in weights_only(reference.state_dict()).items()}
    assert len(set(blobs)) == len(weights_only(reference.state_dict()))  # the table is one-to-one
    # Training leftovers found in the C2 model zoo files: optimizer momenta and bookkeeping scalars.
    blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])
    blobs["lr"] = np.float32(0.1)
    blobs["model_iter"] = np.int64(12345)
    path = tmp_path / "SLOWFAST_4x16_R50.pkl"
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)  # Python-2-era protocol
    else:  # the same numpy blobs through torch.save (a zip read by torch.load(weights_only=True))
        torch.save({"blobs": blobs}, path)
    model = small_model()
    report = load_weights(model, path)
    assert report.source_format == "caffe2" and report.complete
    assert sorted(report.ignored) == ["conv1_w_momentum", "lr", "model_iter"]
    assert_same_logits(model, reference, alpha=SMALL["alpha"])


def test_paddlevideo_pdparams_reproduces_reference_logits(reference, tmp_path):
    params = {}
    for k, v in weights_only(reference.state_dict()).items():
        name = paddle_name(pyslowfast_name(k))
        # Paddle's Linear weight is (in_features, out_features).
        params[name] = v.numpy().T.copy() if name == "head.projection.weight" else v.numpy()
    # paddle.save adds a structured-name -> parameter-name map.
    params["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(params)}
    path = tmp_path / "SlowFast.pdparams"
    with open(path, "wb") as f:
        pickle.dump(params, f, protocol=4)  # paddle.save's default protocol
    model = small_model()
    report = load_weights(model, path)
    assert report.source_format == "paddlevideo" and report.complete
    assert report.ignored == ["StructuredToParameterName@@"]
    assert_same_logits(model, reference, alpha=SMALL["alpha"])


def own_checkpoint(model, path, **extra):
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.model_name,
                "model_args": dataclasses.asdict(model.arch), "epoch": 3, "iteration": 120, "optimizer": {},
                "scaler": None, "config": {"model": {"name": model.model_name}}, "rng": {}, "metrics": {},
                **extra}, path)


@pytest.mark.parametrize("bare", [False, True], ids=["checkpoint", "bare_state_dict"])
def test_own_checkpoint_round_trip(tmp_path, bare):
    source = randomize_(create_model("slowfast_tiny", num_classes=NUM_CLASSES), seed=5).eval()
    path = tmp_path / "ckpt.pt"
    if bare:
        torch.save(source.state_dict(), path)
    else:
        own_checkpoint(source, path)
    model = create_model("slowfast_tiny", num_classes=NUM_CLASSES)
    report = load_weights(model, path)
    assert report.source_format == "slowfast-dali" and report.complete
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    inputs = reference_inputs(alpha=4, size=64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(inputs), source(inputs), rtol=0, atol=0)


# --- fitting, strictness, fine-tuning -----------------------------------------------------------------------

def test_head_of_another_size_is_reinitialised_only_when_asked(tmp_path):
    source = randomize_(create_model("slowfast_tiny", num_classes=NUM_CLASSES), seed=6)
    path = tmp_path / "ckpt.pt"
    own_checkpoint(source, path)
    model = create_model("slowfast_tiny", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(WeightsError, match="reinit_head=True") as err:
        load_weights(model, path)
    assert "head.proj.weight" in str(err.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # untouched

    with torch.no_grad():  # values a re-initialisation must replace
        model.head.proj.weight.fill_(5.0)
        model.head.proj.bias.fill_(1.0)
    report = load_weights(model, path, reinit_head=True)
    assert report.reinitialized == ["head.proj.weight", "head.proj.bias"]
    assert report.mismatched == [] and report.missing == []
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.head.proj.weight.shape == (3, source.head.proj.in_features)
    assert torch.count_nonzero(model.head.proj.bias) == 0
    assert 0.002 < model.head.proj.weight.std().item() < 0.05  # the fresh std-0.01 initialisation


def test_strict_load_of_another_architecture_fails_clearly_and_changes_nothing(reference, tmp_path):
    path = tmp_path / "ptv.pyth"
    torch.save(reference.state_dict(), path)
    # One block per stage (the file's extra blocks are unexpected) and fusion kernel 7 (the file has 5).
    model = small_model(depths=(1, 1, 1, 1), fusion_kernel=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert "fuse_res4.conv.weight" in message and "res_blocks.1" in message and "strict=False" in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())

    report = load_weights(model, path, strict=False)
    # Fast channels after stem/res2/res3/res4 are width/beta_inv * (1, 4, 8, 16) = 2, 8, 16, 32.
    assert sorted(report.mismatched) == sorted([
        ("fuse_stem.conv.weight", (4, 2, 5, 1, 1), (4, 2, 7, 1, 1)),
        ("fuse_res2.conv.weight", (16, 8, 5, 1, 1), (16, 8, 7, 1, 1)),
        ("fuse_res3.conv.weight", (32, 16, 5, 1, 1), (32, 16, 7, 1, 1)),
        ("fuse_res4.conv.weight", (64, 32, 5, 1, 1), (64, 32, 7, 1, 1)),
    ])
    assert report.missing == []
    assert any(name.startswith("blocks.3.multipathway_blocks.0.res_blocks.5.") for name in report.unexpected)
    assert torch.equal(model.state_dict()["slow_stem.conv.weight"],
                       reference.state_dict()["blocks.0.multipathway_blocks.0.conv.weight"])
    assert torch.equal(model.state_dict()["fuse_res2.conv.weight"], before["fuse_res2.conv.weight"])


def test_checkpoint_of_another_variant_names_the_fix(tmp_path):
    source = create_model("slowfast_tiny", num_classes=NUM_CLASSES, width=16)
    path = tmp_path / "ckpt.pt"
    own_checkpoint(source, path, model_name="slowfast_tiny_wide")
    with pytest.raises(WeightsError, match="model_from_arch"):
        load_weights(create_model("slowfast_tiny", num_classes=NUM_CLASSES), path)


# --- security and bad files ---------------------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["pickle", "torch_save"])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"blobs": {"conv1_w": np.zeros((2, 3, 1, 7, 7), np.float32), "evil": _Exploit(marker)}}
    path = tmp_path / ("evil.pkl" if writer == "pickle" else "evil.pyth")
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    with pytest.raises(WeightsError, match="system"):
        load_weights(create_model("slowfast_tiny"), path)
    assert not marker.exists()


def test_unknown_names_are_reported_with_the_accepted_formats(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.layer0.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="pyslowfast") as err:
        load_weights(create_model("slowfast_tiny"), path)
    assert "encoder.layer0.weight" in str(err.value)


def test_missing_file_and_garbage_file_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(create_model("slowfast_tiny"), tmp_path / "nope.pyth")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(WeightsError, match="garbage.pkl"):
        load_weights(create_model("slowfast_tiny"), garbage)


def test_other_version_of_own_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "slowfast-dali/9", "model": {}}, path)
    with pytest.raises(WeightsError, match="slowfast-dali/9"):
        load_weights(create_model("slowfast_tiny"), path)
