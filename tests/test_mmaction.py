"""MMAction2 SlowFast checkpoints, proven against a minimal copy of MMAction2's layer layout.

MMAction2's package needs mmcv, so the network is written out below with its module names and computation
(``mmaction/models/backbones/resnet3d_slowfast.py`` ResNet3dSlowFast / ResNet3dPathway, ``resnet3d.py``
Bottleneck3d / stem / make_res_layer, ``heads/slowfast_head.py`` SlowFastHead, mmcv's ConvModule), given random
weights, and saved as MMAction2 saves checkpoints (``{"meta": ..., "state_dict": ...}``). MMAction2's model takes
one clip and picks the Slow frames itself (nearest interpolation in time); ours is fed the frames its
``arch.slow_sampling`` names. Logits must agree.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import WeightsError, create_model, load_pretrained, load_weights, slow_frame_indices
from test_weights import randomize_  # tests/test_weights.py

NUM_CLASSES = 10


# tiny tensors: OpenMP synchronisation would dominate (the fixture is in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# --- a minimal copy of MMAction2's SlowFast layout ----------------------------------------------------------

class ConvModule(nn.Module):
    """mmcv.cnn.ConvModule as MMAction2 uses it: conv (no bias), then ``bn`` and ReLU when configured."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(cout) if norm else None
        self.activate = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x) if self.bn is not None else x
        return self.activate(x) if self.activate is not None else x


class Bottleneck3d(nn.Module):
    """'pytorch' style: the spatial stride in conv2; inflated blocks have a (3, 1, 1) conv1."""
    expansion = 4

    def __init__(self, inplanes, planes, spatial_stride, inflate, downsample):
        super().__init__()
        self.conv1 = ConvModule(inplanes, planes, (3, 1, 1) if inflate else 1, padding=(1, 0, 0) if inflate else 0)
        self.conv2 = ConvModule(planes, planes, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1))
        self.conv3 = ConvModule(planes, planes * self.expansion, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet3dPathway(nn.Module):
    def __init__(self, base_channels, conv1_kernel, inflate, depths, lateral=False, speed_ratio=8,
                 channel_ratio=8, fusion_kernel=5, lateral_norm=False, lateral_infl=2):
        super().__init__()
        # _calculate_lateral_inplanes (expansion 4): channels the fast pathway adds before each stage
        lateral_inplanes = [base_channels * 2 ** i * 2 ** (i > 0) * lateral_infl // channel_ratio if lateral else 0
                            for i in range(4)]
        self.conv1 = ConvModule(3, base_channels, conv1_kernel, stride=(1, 2, 2),
                                padding=tuple((k - 1) // 2 for k in conv1_kernel))
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        lateral_args = dict(kernel=(fusion_kernel, 1, 1), stride=(speed_ratio, 1, 1),
                            padding=((fusion_kernel - 1) // 2, 0, 0), norm=lateral_norm, act=lateral_norm)
        if lateral:
            self.conv1_lateral = ConvModule(base_channels // channel_ratio,
                                            base_channels * lateral_infl // channel_ratio, **lateral_args)
        inplanes = base_channels
        self.res_layers, self.lateral_connections = [], []
        for i, depth in enumerate(depths):
            planes = base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                block_in = inplanes + lateral_inplanes[i] if j == 0 else planes * 4
                downsample = None
                if j == 0 and (stride != 1 or block_in != planes * 4):
                    downsample = ConvModule(block_in, planes * 4, 1, stride=(1, stride, stride), act=False)
                blocks.append(Bottleneck3d(block_in, planes, stride if j == 0 else 1, inflate[i], downsample))
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.res_layers.append(f"layer{i + 1}")
            inplanes = planes * 4
            if lateral and i != len(depths) - 1:
                setattr(self, f"layer{i + 1}_lateral", ConvModule(inplanes // channel_ratio,
                                                                  inplanes * lateral_infl // channel_ratio,
                                                                  **lateral_args))
                self.lateral_connections.append(f"layer{i + 1}_lateral")


class ResNet3dSlowFast(nn.Module):
    def __init__(self, depths, resample_rate, speed_ratio, channel_ratio, fusion_kernel, lateral_norm, width):
        super().__init__()
        self.resample_rate, self.speed_ratio = resample_rate, speed_ratio
        self.slow_path = ResNet3dPathway(width, (1, 7, 7), (0, 0, 1, 1), depths, lateral=True,
                                         speed_ratio=speed_ratio, channel_ratio=channel_ratio,
                                         fusion_kernel=fusion_kernel, lateral_norm=lateral_norm)
        self.fast_path = ResNet3dPathway(width // channel_ratio, (5, 7, 7), (1, 1, 1, 1), depths)

    def forward(self, x):
        x_slow = F.interpolate(x, mode="nearest", scale_factor=(1.0 / self.resample_rate, 1.0, 1.0))
        x_slow = self.slow_path.maxpool(self.slow_path.conv1(x_slow))
        x_fast = F.interpolate(x, mode="nearest",
                               scale_factor=(1.0 / (self.resample_rate // self.speed_ratio), 1.0, 1.0))
        x_fast = self.fast_path.maxpool(self.fast_path.conv1(x_fast))
        x_slow = torch.cat((x_slow, self.slow_path.conv1_lateral(x_fast)), dim=1)
        for i, name in enumerate(self.slow_path.res_layers):
            x_slow = getattr(self.slow_path, name)(x_slow)
            x_fast = getattr(self.fast_path, name)(x_fast)
            if i != len(self.slow_path.res_layers) - 1:
                lateral = getattr(self.slow_path, self.slow_path.lateral_connections[i])
                x_slow = torch.cat((x_slow, lateral(x_fast)), dim=1)
        return x_slow, x_fast


class SlowFastHead(nn.Module):
    def __init__(self, in_channels, num_classes, dropout_ratio=0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout_ratio)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))

    def forward(self, x):
        x_slow, x_fast = x
        x = torch.cat((self.avg_pool(x_fast), self.avg_pool(x_slow)), dim=1)  # fast first
        return self.fc_cls(self.dropout(x).view(x.size(0), -1))


class Recognizer3D(nn.Module):
    def __init__(self, *, depths=(3, 4, 6, 3), alpha=8, beta_inv=8, fusion_kernel=5, lateral_norm=False,
                 width=64):
        super().__init__()
        self.backbone = ResNet3dSlowFast(depths, alpha, alpha, beta_inv, fusion_kernel, lateral_norm, width)
        self.cls_head = SlowFastHead(width * 32 + width * 32 // beta_inv, NUM_CLASSES)

    def forward(self, x):
        return self.cls_head(self.backbone(x))


# MMAction2's model-zoo configs: slowfast_r50_8xb8-4x16x1 (resample_rate = speed_ratio = 8, fusion_kernel 5)
# and slowfast_r50_8xb8-8x8x1 (4 and 7); SMALL is the R50 layout at width 8, beta_inv 4 (cheap).
R50_4x16 = dict(alpha=8, fusion_kernel=5)
R50_8x8 = dict(alpha=4, fusion_kernel=7)
SMALL = dict(alpha=4, fusion_kernel=5, width=8, beta_inv=4)
CONFIG_TEXT = "model = dict(type='Recognizer3D', backbone=dict(type='ResNet3dSlowFast', resample_rate={a}, " \
              "speed_ratio={a}, channel_ratio={b}, slow_pathway=dict(fusion_kernel={k})))"


def save_mmaction2(reference, path, *, meta_cfg=None, preprocessor=False):
    state = reference.state_dict()
    if preprocessor:  # present in unpublished checkpoints (publish_model.py deletes them)
        state["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1)
        state["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1, 1)
    meta = {"mmengine_version": "0.8.4", "dataset_meta": {"num_classes": NUM_CLASSES}}
    if meta_cfg is not None:
        meta["cfg"] = meta_cfg
    torch.save({"meta": meta, "state_dict": state}, path)


def our_inputs(model, clip):
    """[slow, fast] for our model from MMAction2's single clip, with the model's own Slow-frame rule."""
    slow = clip[:, :, torch.from_numpy(slow_frame_indices(clip.shape[2], model.arch.alpha, model.arch.slow_sampling))]
    return [slow.contiguous(), clip]


def assert_same_logits(model, reference, alpha, size=32, frames_per_slow=2):
    g = torch.Generator().manual_seed(1)
    clip = torch.randn(2, 3, frames_per_slow * alpha, size, size, generator=g)
    with torch.no_grad():
        expected = reference(clip.clone())
        got = model.eval()(our_inputs(model, clip))
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel <= 1e-5, f"logits differ from MMAction2's by {rel:.2e} (relative)"


def test_nearest_rule_is_what_mmaction2_interpolation_picks():
    for frames, alpha in ((32, 8), (32, 4), (16, 4)):
        clip = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1)
        picked = F.interpolate(clip, mode="nearest", scale_factor=(1.0 / alpha, 1.0, 1.0)).flatten().long()
        assert picked.tolist() == slow_frame_indices(frames, alpha, "nearest").tolist()
    assert slow_frame_indices(32, 8, "nearest").tolist() == [0, 8, 16, 24]


@pytest.mark.parametrize("variant,config,with_meta", [("4x16", R50_4x16, False), ("8x8", R50_8x8, True)])
def test_r50_checkpoint_imports_exactly(tmp_path, variant, config, with_meta):
    reference = randomize_(Recognizer3D(**config), seed=11).eval()
    path = tmp_path / f"slowfast_r50_{variant}.pth"
    meta_cfg = CONFIG_TEXT.format(a=config["alpha"], b=8, k=config["fusion_kernel"]) if with_meta else None
    save_mmaction2(reference, path, meta_cfg=meta_cfg)

    model, report = load_pretrained(path)
    assert report.source_format == "mmaction2" and report.complete
    assert model.model_name == f"slowfast_r50_{variant}"
    arch = model.arch
    assert (arch.alpha, arch.fusion_kernel, arch.depths, arch.num_classes) == (
        config["alpha"], config["fusion_kernel"], (3, 4, 6, 3), NUM_CLASSES)
    assert arch.lateral_norm is False and arch.slow_sampling == "nearest" and arch.head_pooling == "global"
    # ImageNet statistics on 0-255 pixels, as [0, 1] values
    assert arch.input_mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)
    assert arch.input_std == pytest.approx((0.229, 0.224, 0.225), abs=1e-3)
    assert_same_logits(model, reference, config["alpha"])

    # the registered variant built with the MMAction2 lateral type takes the file through load_weights too
    same = create_model(f"slowfast_r50_{variant}", num_classes=NUM_CLASSES, lateral_norm=False)
    assert load_weights(same, path).complete


@pytest.mark.parametrize("lateral_norm", [False, True])
def test_both_lateral_types_and_a_256_test_crop(tmp_path, lateral_norm):
    reference = randomize_(Recognizer3D(**SMALL, lateral_norm=lateral_norm), seed=12).eval()
    path = tmp_path / "small.pth"
    save_mmaction2(reference, path, meta_cfg=CONFIG_TEXT.format(a=4, b=4, k=5), preprocessor=True)
    model, report = load_pretrained(path)
    assert report.complete and report.ignored == ["data_preprocessor.mean", "data_preprocessor.std"]
    assert model.arch.lateral_norm is lateral_norm and model.arch.alpha == 4  # alpha from meta's speed_ratio
    assert model.arch.input_mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)
    assert_same_logits(model, reference, alpha=4)
    # MMAction2 tests at 256 with its global pool; the imported model records that head
    assert not model.returns_log_probs(256, 256)
    assert_same_logits(model, reference, alpha=4, size=256, frames_per_slow=1)


def test_default_model_names_the_lateral_mismatch_and_load_pretrained(tmp_path):
    reference = Recognizer3D(**SMALL)
    path = tmp_path / "small.pth"
    save_mmaction2(reference, path)
    model = create_model("slowfast_r50_8x8", num_classes=NUM_CLASSES, width=8, beta_inv=4, fusion_kernel=5)
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)  # ours has BN after each fusion conv; the file has none
    assert "fuse_stem.bn.weight" in str(err.value) and "load_pretrained" in str(err.value)
    # width 8 / beta_inv 4 is no published model and the file has no config: alpha must be given
    with pytest.raises(WeightsError, match="alpha=N") as err:
        load_pretrained(path)
    assert "mmaction2" in str(err.value) and "depths=(3, 4, 6, 3)" in str(err.value)
    model, report = load_pretrained(path, alpha=4)
    assert report.complete and model.arch.alpha == 4
