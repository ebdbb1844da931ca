"""The SlowFast family: published sizes, registry behaviour, gradients, autocast and channels-last layout."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import SlowFastArch, create_model, list_models, model_from_arch, register_model
from pytorchvideo_reference import import_pytorchvideo_slowfast  # tests/pytorchvideo_reference.py
from models.slowfast import Bottleneck, FuseFastToSlow, Head, slow_frame_indices

CL3D = torch.channels_last_3d

# Published sizes (PySlowFast MODEL_ZOO / the SlowFast paper's Table, 400 Kinetics classes).
PUBLISHED_PARAMS = {
    "slowfast_r50_4x16": 34_480_216,
    "slowfast_r50_8x8": 34_566_488,
    "slowfast_r101_8x8": 62_826_968,
}
# Multiply-accumulates per 256x256 view: (variant, slow frames, fast frames, GMACs).
PUBLISHED_GMACS = [("slowfast_r50_4x16", 4, 32, 36.10), ("slowfast_r50_8x8", 8, 32, 65.71)]


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """These tensors are tiny: with several threads the OpenMP synchronisation dominates.

    NOTE: measured on the 2-core CI box under load: slowfast_r50_4x16 forward+backward at 2x(1|8)x32x32 took
    11.6 s with 2 threads and 0.69 s with 1 (torch.profiler: native_batch_norm alone 21 ms -> 0.08 ms a call).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def clips(model, batch=2, slow_frames=2, size=32, memory_format=torch.contiguous_format, seed=0):
    """Random [slow, fast] clips with the model's alpha."""
    g = torch.Generator().manual_seed(seed)
    fast_frames = slow_frames * model.arch.alpha
    slow = torch.randn(batch, 3, slow_frames, size, size, generator=g)
    fast = torch.randn(batch, 3, fast_frames, size, size, generator=g)
    return [slow.contiguous(memory_format=memory_format), fast.contiguous(memory_format=memory_format)]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published_and_pytorchvideo(name):
    with torch.device("meta"):
        model = create_model(name)
    assert n_params(model) == PUBLISHED_PARAMS[name]
    # The same count from pytorchvideo's reference builder with the variant's published settings.
    create_slowfast = import_pytorchvideo_slowfast()
    depth = 101 if "r101" in name else 50
    published = {"slowfast_r50_4x16": (8, 5), "slowfast_r50_8x8": (4, 7), "slowfast_r101_8x8": (4, 5)}
    alpha, kernel = published[name]  # (alpha, fusion kernel)
    with torch.device("meta"):  # only shapes are needed
        reference = create_slowfast(model_depth=depth, slowfast_fusion_conv_kernel_size=(kernel, 1, 1),
                                    slowfast_fusion_conv_stride=(alpha, 1, 1))
    assert n_params(reference) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name,slow_frames,fast_frames,gmacs", PUBLISHED_GMACS)
def test_macs_per_view_match_published(name, slow_frames, fast_frames, gmacs):
    with torch.device("meta"):  # FLOP formulas need shapes only, so the 256x256 forward costs nothing
        model = create_model(name).eval()
        inputs = [torch.empty(1, 3, slow_frames, 256, 256), torch.empty(1, 3, fast_frames, 256, 256)]
        with FlopCounterMode(display=False) as counter:
            model(inputs)
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(gmacs, abs=0.005)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    # Tiny clips keep the big variants cheap: 32x32 gives 1x1 after res5, batch 2 keeps BN defined.
    inputs = clips(model, batch=2, slow_frames=1 if model.arch.alpha == 8 else 2, size=32)
    logits = model(inputs)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
    # The zero-initialised last BN of each block still learns (its gradient is what opens the branch).
    assert all(m.bn_c.weight.grad.abs().sum() > 0 for m in model.modules() if isinstance(m, Bottleneck))


def test_last_bn_of_every_residual_block_is_zero_initialised():
    model = create_model("slowfast_r50_4x16")
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 2 * (3 + 4 + 6 + 3)
    for block in blocks:
        assert torch.count_nonzero(block.bn_c.weight) == 0
        assert torch.all(block.bn_a.weight == 1) and torch.all(block.bn_b.weight == 1)


def test_published_topology():
    # The spec written out: stems, fusion kernels/strides, temporal kernels per stage, no temporal strides.
    with torch.device("meta"):
        model, model_8x8 = create_model("slowfast_r50_4x16"), create_model("slowfast_r50_8x8")
    assert (model.slow_stem.conv.kernel_size, model.slow_stem.conv.out_channels) == ((1, 7, 7), 64)
    assert (model.fast_stem.conv.kernel_size, model.fast_stem.conv.out_channels) == ((5, 7, 7), 8)
    assert model.fast_stem.conv.stride == (1, 2, 2)
    assert (model.fast_stem.pool.kernel_size, model.fast_stem.pool.stride) == ((1, 3, 3), (1, 2, 2))
    for fuse, fast_channels in ((model.fuse_stem, 8), (model.fuse_res2, 32), (model.fuse_res3, 64),
                                (model.fuse_res4, 128)):
        assert fuse.conv.kernel_size == (5, 1, 1) and fuse.conv.stride == (8, 1, 1)
        assert (fuse.conv.in_channels, fuse.conv.out_channels) == (fast_channels, 2 * fast_channels)
    assert not hasattr(model, "fuse_res5")
    for stage, slow_t, fast_t in zip(("res2", "res3", "res4", "res5"), (1, 1, 3, 3), (3, 3, 3, 3)):
        for block in getattr(model, f"slow_{stage}").blocks:
            assert block.conv_a.kernel_size[0] == slow_t and block.conv_a.stride[0] == 1
        for block in getattr(model, f"fast_{stage}").blocks:
            assert block.conv_a.kernel_size[0] == fast_t and block.conv_b.stride[0] == 1
    assert model.head.proj.in_features == 2048 + 256 and model.head.dropout.p == 0.5
    assert model_8x8.fuse_res3.conv.kernel_size == (7, 1, 1) and model_8x8.fuse_res3.conv.stride == (4, 1, 1)


def test_head_is_global_average_pool_concat_linear_and_returns_logits():
    model = create_model("slowfast_tiny", num_classes=6).eval()
    features = {}
    model.slow_res5.register_forward_hook(lambda m, i, o: features.__setitem__("slow", o))
    model.fast_res5.register_forward_hook(lambda m, i, o: features.__setitem__("fast", o))
    with torch.no_grad():
        nn.init.normal_(model.head.proj.weight)  # large weights so a softmax would be visible
        logits = model(clips(model, size=64))
    pooled = torch.cat([features["slow"].mean(dim=(2, 3, 4)), features["fast"].mean(dim=(2, 3, 4))], dim=1)
    expected = pooled @ model.head.proj.weight.T + model.head.proj.bias
    torch.testing.assert_close(logits, expected)


class PySlowFastBasicHead(nn.Module):
    """A minimal copy of PySlowFast's ResNetBasicHead (slowfast/models/head_helper.py) for two pathways:
    AvgPool3d(pool_size, stride=1) per pathway, concat, (N, T, H, W, C), dropout, linear; in eval mode a softmax
    over classes at every position, then the mean over (T, H, W)."""

    def __init__(self, dim_in, num_classes, pool_size, dropout_rate):
        super().__init__()
        self.pools = nn.ModuleList(nn.AvgPool3d(size, stride=1) for size in pool_size)
        self.dropout = nn.Dropout(dropout_rate)
        self.projection = nn.Linear(sum(dim_in), num_classes)
        self.act = nn.Softmax(dim=4)

    def forward(self, inputs):
        x = torch.cat([pool(x) for pool, x in zip(self.pools, inputs)], 1).permute(0, 2, 3, 4, 1)
        x = self.projection(self.dropout(x))
        if not self.training:
            x = self.act(x)
            if x.shape[1:4] > torch.Size([1, 1, 1]):
                x = x.mean([1, 2, 3])
        return x.view(x.shape[0], -1)


@pytest.mark.parametrize("size,positions", [(7, 1), (8, 4), (9, 9)])  # res5 of 224, 256, 288 crops
def test_reference_head_matches_pyslowfast_basic_head_on_random_features(size, positions):
    # SlowFast R50 4x16 at the end of res5: slow (2048 ch, 4 frames), fast (256 ch, 32 frames); trained at 224,
    # so PySlowFast pools (4, 7, 7) and (32, 7, 7) windows (TRAIN_CROP_SIZE // 32 = 7).
    torch.manual_seed(0)
    slow, fast = torch.randn(2, 64, 4, size, size), torch.randn(2, 8, 32, size, size)
    ours = Head(72, 11, dropout=0.5, window=7).eval()
    reference = PySlowFastBasicHead([64, 8], 11, [[4, 7, 7], [32, 7, 7]], dropout_rate=0.5).eval()
    with torch.no_grad():
        nn.init.normal_(ours.proj.weight)  # large weights: the softmax-then-mean order matters
        reference.projection.load_state_dict(ours.proj.state_dict())
        got, expected = ours(slow, fast), reference([slow, fast])
    assert ours.pools_positions(size, size) == (positions > 1)
    torch.testing.assert_close(torch.softmax(got, dim=1), expected, rtol=1e-5, atol=1e-7)
    if positions == 1:  # the training size: logits of the global pool, as before the reference head existed
        pooled = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
        assert torch.equal(got, ours.proj(pooled))
    else:  # log of the averaged probabilities: the averaged logits would rank differently in general
        assert torch.allclose(got.exp().sum(dim=1), torch.ones(2))


def test_global_head_pooling_option_pools_globally_at_every_size():
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=6, head_pooling="global", train_crop=32).eval()
    features = {}
    model.slow_res5.register_forward_hook(lambda m, i, o: features.__setitem__("slow", o))
    model.fast_res5.register_forward_hook(lambda m, i, o: features.__setitem__("fast", o))
    with torch.no_grad():
        nn.init.normal_(model.head.proj.weight)
        logits = model(clips(model, size=96))  # 3x3 res5 positions, window 1
    assert not model.returns_log_probs(96, 96)
    pooled = torch.cat([features["slow"].mean(dim=(2, 3, 4)), features["fast"].mean(dim=(2, 3, 4))], dim=1)
    torch.testing.assert_close(logits, pooled @ model.head.proj.weight.T + model.head.proj.bias)
    # the same weights with the reference head (window 1 at train_crop 32): the mean over the 3x3 positions of
    # each position's softmax
    model.head.pooling = "reference"
    with torch.no_grad():
        log_probs = model(clips(model, size=96))
    slow, fast = features["slow"], features["fast"]
    per_position = torch.cat([slow.mean(dim=2), fast.mean(dim=2)], dim=1).flatten(2).transpose(1, 2)
    expected = torch.softmax(per_position @ model.head.proj.weight.T + model.head.proj.bias, dim=2).mean(dim=1)
    torch.testing.assert_close(log_probs.exp(), expected)


def test_training_crop_sets_the_head_window_and_training_size_gives_logits():
    # res5 size at the training crop: 224 -> 7, 256 -> 8, 32 -> 1, 56 -> 2 (each stride-2 step rounds up)
    for crop, window in ((224, 7), (256, 8), (32, 1), (56, 2)):
        with torch.device("meta"):
            model = create_model("slowfast_tiny", train_crop=crop)
        assert model.head.window == window
        assert not model.returns_log_probs(crop, crop) and model.returns_log_probs(crop + 32, crop + 32)


def test_tiny_is_small_and_keeps_fast_temporal_kernels():
    model = create_model("slowfast_tiny", num_classes=8)
    assert 20_000 <= n_params(model) <= 400_000
    assert model.arch.alpha == 4
    assert all(b.conv_a.kernel_size[0] == 3 for s in ("res2", "res3", "res4", "res5")
               for b in getattr(model, f"fast_{s}").blocks)
    assert model.fast_stem.conv.kernel_size[0] == 5


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("slowfast_r18_nope")
    assert "slowfast_r18_nope" in str(err.value)
    for name in ("slowfast_r50_4x16", "slowfast_r50_8x8", "slowfast_r101_8x8", "slowfast_tiny"):
        assert name in str(err.value)


def test_unknown_override_is_an_error_naming_it():
    with pytest.raises(ValueError, match="dropuot"):
        create_model("slowfast_tiny", dropuot=0.1)


def test_duplicate_registration_is_refused():
    def slowfast_tiny(num_classes=400, **overrides):  # same name as a registered variant
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(slowfast_tiny)


def test_overrides_change_the_architecture():
    model = create_model("slowfast_tiny", num_classes=3, width=16, dropout=0.1)
    assert model.model_name == "slowfast_tiny"
    assert (model.arch.width, model.arch.dropout, model.arch.num_classes) == (16, 0.1, 3)
    assert model.slow_stem.conv.out_channels == 16 and model.fast_stem.conv.out_channels == 4
    assert model.head.dropout.p == 0.1 and model.head.proj.out_features == 3


@pytest.mark.parametrize("bad,match", [({"width": 10}, "beta_inv"), ({"fusion_kernel": 4}, "odd"),
                                       ({"depths": (1, 1, 1)}, "res2..res5"), ({"dropout": 1.0}, "dropout"),
                                       ({"head_pooling": "max"}, "reference"),
                                       ({"slow_sampling": "uniform"}, "nearest"),
                                       ({"input_mean": (0.5, 0.5)}, "in_channels=3"),
                                       ({"input_std": (0.2, 0.0, 0.2)}, "positive"),
                                       ({"train_crop": 0}, "train_crop")])
def test_invalid_architecture_is_rejected_with_the_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        create_model("slowfast_tiny", **bad)


def test_model_from_arch_rebuilds_an_identical_model_through_json():
    torch.manual_seed(0)
    original = create_model("slowfast_tiny", num_classes=7, width=16, fusion_kernel=7).eval()
    arch_dict = json.loads(json.dumps(dataclasses.asdict(original.arch)))  # tuples become lists, as in YAML
    rebuilt = model_from_arch("slowfast_tiny", arch_dict).eval()
    assert rebuilt.arch == original.arch and isinstance(rebuilt.arch, SlowFastArch)
    rebuilt.load_state_dict(original.state_dict())  # strict: same names and shapes
    inputs = clips(original, size=64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), original(inputs), rtol=0, atol=0)


def test_checkpoint_args_written_before_the_new_fields_rebuild_the_same_model():
    torch.manual_seed(0)
    original = create_model("slowfast_tiny", num_classes=7).eval()
    old_args = dataclasses.asdict(original.arch)
    for name in ("lateral_norm", "train_crop", "head_pooling", "input_mean", "input_std", "slow_sampling"):
        del old_args[name]  # a model_args dict as checkpoints held before these fields existed
    rebuilt = model_from_arch("slowfast_tiny", old_args).eval()
    assert rebuilt.arch == original.arch
    assert (rebuilt.arch.lateral_norm, rebuilt.arch.train_crop, rebuilt.arch.head_pooling,
            rebuilt.arch.slow_sampling) == (True, 224, "reference", "linspace")
    assert rebuilt.arch.input_mean == (0.45, 0.45, 0.45) and rebuilt.arch.input_std == (0.225, 0.225, 0.225)
    rebuilt.load_state_dict(original.state_dict())
    inputs = clips(original, size=64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), original(inputs), rtol=0, atol=0)


def test_lateral_connections_without_norm():
    with torch.device("meta"):
        plain = create_model("slowfast_r50_4x16", lateral_norm=False)
    fusions = [plain.fuse_stem, plain.fuse_res2, plain.fuse_res3, plain.fuse_res4]
    assert all(f.bn is None and f.relu is None for f in fusions)
    assert not any(".bn." in k for k in plain.state_dict() if k.startswith("fuse_"))
    # BN weight + bias of the fusion outputs (2 x 8, 32, 64, 128 fast channels) are the only difference
    assert PUBLISHED_PARAMS["slowfast_r50_4x16"] - n_params(plain) == 2 * 2 * (8 + 32 + 64 + 128)
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=4, lateral_norm=False).eval()
    slow, fast = torch.randn(2, 8, 2, 8, 8), torch.randn(2, 2, 8, 8, 8)  # stem features: width 8, 8 / beta_inv 4
    with torch.no_grad():  # the fusion is the bare time-strided convolution, concatenated after the slow features
        fused = model.fuse_stem(slow, fast)
        conv = F.conv3d(fast, model.fuse_stem.conv.weight, stride=(4, 1, 1), padding=(2, 0, 0))
    assert torch.equal(fused[:, :8], slow)
    torch.testing.assert_close(fused[:, 8:], conv)


def test_slow_frame_rules():
    # linspace(0, 31, 4) = 0, 10.33, 20.67, 31 rounded down; nearest: every 8th frame from the first
    assert slow_frame_indices(32, 8).tolist() == [0, 10, 20, 31]
    assert slow_frame_indices(32, 8, "nearest").tolist() == [0, 8, 16, 24]
    assert slow_frame_indices(32, 4, "nearest").tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    with pytest.raises(ValueError, match="alpha=8"):
        slow_frame_indices(30, 8)
    with pytest.raises(ValueError, match="linspace"):
        slow_frame_indices(32, 8, "uniform")


def test_frame_count_mismatch_is_a_clear_error():
    model = create_model("slowfast_tiny")
    slow, fast = clips(model)
    with pytest.raises(ValueError, match="alpha=4"):
        model([slow, fast[:, :, :5]])


def test_autocast_bf16_cpu_forward_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=10).eval()
    for module in model.modules():  # non-trivial blocks, so the comparison covers every branch
        if isinstance(module, Bottleneck):
            nn.init.ones_(module.bn_c.weight)
    nn.init.normal_(model.head.proj.weight, std=0.5)
    inputs = clips(model, size=64)
    with torch.no_grad():
        reference = model(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(inputs)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    rel = (logits.float() - reference).norm() / reference.norm()
    assert rel < 0.05, f"bf16 logits differ from fp32 by {rel:.3f} (relative)"


def _layout_hooks(model):
    """Forward hooks recording every conv/BN/pool/fusion output that is not channels-last."""
    offenders = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, FuseFastToSlow)):
            module.register_forward_hook(
                lambda m, i, out, name=name: None if out.is_contiguous(memory_format=CL3D)
                else offenders.append((name, tuple(out.shape), out.stride())))
    return offenders


# Two blocks per stage add identity-shortcut blocks to the layout check.
@pytest.mark.parametrize("depths", [(1, 1, 1, 1), (2, 2, 2, 2)])
def test_channels_last_input_keeps_channels_last_activations(depths):
    # NOTE: with one thread, PyTorch's CPU conv3d picks the reference kernel (slow_conv3d, NCDHW output) for
    # kernels that are 1x1 in space (torch 2.13: F.conv3d on channels-last x and a (3, 1, 1) weight gives a
    # channels-last result with 2 threads, NCDHW with 1), so this test runs with two threads.
    torch.set_num_threads(2)
    model = create_model("slowfast_tiny", num_classes=5, depths=depths).to(memory_format=CL3D).train()
    offenders = _layout_hooks(model)
    inputs = clips(model, slow_frames=2, size=32, memory_format=CL3D)
    logits = model(inputs)
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert offenders == []
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert all(w.grad.is_contiguous(memory_format=CL3D) for w in conv_weights)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_channels_last_under_cuda_autocast(dtype):
    # NOTE: on the CPU, PyTorch's reduced-precision conv3d returns NCDHW even for channels-last input and
    # weight (torch 2.13: F.conv3d(x_cl.bfloat16(), w_cl.bfloat16()).is_contiguous(channels_last_3d) is
    # False), so the low-precision layout is checked on the GPU, where cuDNN keeps it.
    model = create_model("slowfast_r50_4x16", num_classes=5).cuda().to(memory_format=CL3D)
    offenders = _layout_hooks(model)
    inputs = [x.cuda() for x in clips(model, slow_frames=2, size=64, memory_format=CL3D)]
    with torch.autocast("cuda", dtype=dtype):
        logits = model(inputs)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert offenders == []


def test_time_difference_input_for_the_fast_pathway():
    from models.slowfast import time_difference

    # frame t holds the value t * t: differences are 2t - 1 for t >= 1, and 0 for the first frame
    clip = torch.arange(6, dtype=torch.float32).pow(2).view(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 4)
    clip = clip.contiguous(memory_format=torch.channels_last_3d)
    diff = time_difference(clip)
    expected = torch.tensor([0.0, 1.0, 3.0, 5.0, 7.0, 9.0]).view(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 4)
    assert torch.equal(diff, expected)
    assert diff.is_contiguous(memory_format=torch.channels_last_3d)

    plain = create_model("slowfast_tiny", num_classes=5)
    with_diff = create_model("slowfast_tiny", num_classes=5, fast_time_diff=True)
    assert plain.fast_stem.conv.in_channels == 3 and with_diff.fast_stem.conv.in_channels == 6
    # the model's Fast stem sees [RGB, time difference]: zeroing the difference half of its kernel gives
    # back the plain model's computation
    with_diff.load_state_dict({k: v for k, v in plain.state_dict().items() if "fast_stem.conv" not in k},
                              strict=False)
    with torch.no_grad():
        with_diff.fast_stem.conv.weight.zero_()
        with_diff.fast_stem.conv.weight[:, :3] = plain.fast_stem.conv.weight
    plain.eval(), with_diff.eval()
    fast = torch.randn(2, 3, 8, 32, 32)
    inputs = [fast[:, :, ::4].contiguous(), fast]
    torch.testing.assert_close(with_diff(inputs), plain(inputs), rtol=1e-5, atol=1e-6)
    # and the difference channels do matter when their weights are not zero
    with torch.no_grad():
        with_diff.fast_stem.conv.weight[:, 3:] = 0.5
    assert not torch.allclose(with_diff(inputs), plain(inputs))
