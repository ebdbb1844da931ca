"""Load weights into a SlowFast model from this project's checkpoints or from other projects' files.

Accepted, detected from the file's content (not its name):

========================  ===========================================================================
format                    what the file holds
========================  ===========================================================================
``slowfast-dali``         this project's checkpoint (``{"format": "slowfast-dali/1", "model": ...}``) or a
                          bare ``state_dict()`` of one of its models
``pyslowfast``            PySlowFast ``.pyth``: ``{"model_state": ...}``, ``s1.pathway0_stem.conv.weight``
``pytorchvideo``          pytorchvideo state dict, bare or ``{"model_state": ...}`` (hub checkpoints):
                          ``blocks.0.multipathway_blocks.0.conv.weight``
``caffe2``                PySlowFast's Caffe2 ``.pkl``: pickled ``{"blobs": {"conv1_w": ndarray, ...}}``
``paddlevideo``           PaddleVideo ``.pdparams``: pickled ``{"backbone.s1.pathway0_stem._conv.weight":
                          ndarray, ...}``; Linear weights stored (in, out), BN statistics ``_mean``,
                          ``_variance``
``mmaction2``             MMAction2 ``.pth``: ``{"meta": ..., "state_dict": ...}``,
                          ``backbone.slow_path.conv1.conv.weight``, ``backbone.slow_path.conv1_lateral.conv.weight``,
                          ``cls_head.fc_cls.weight``; the classifier reads (fast, slow) features
========================  ===========================================================================

Two entry points: :func:`load_weights` loads a file into a model you built; :func:`load_pretrained` builds the
model the file fits (variant, depth, alpha, lateral type, class count, and the source project's input
conventions and test-time head, recorded in ``model.arch``) and loads it.

Every converter is a table of regular-expression renames into this project's parameter names (the
``_*_RULES`` tables and ``_CONVERTERS`` below), plus a value transform where a format stores a tensor
differently (Paddle's transposed Linear, MMAction2's (fast, slow) classifier columns). Caffe2 and PaddleVideo names
are first rewritten into PySlowFast's names (Caffe2 by PySlowFast's own documented rules,
``slowfast/utils/c2_model_loading.py``), then share the PySlowFast table.

Security: ``torch.load(weights_only=True)`` for torch files; plain pickles go through an unpickler that admits
only numpy arrays, numpy scalars and dtypes and plain containers, so a file that would run code (a pickle
calling ``os.system``) fails with :class:`WeightsError` before anything runs.
"""
from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import yaml

from models.checkpoint_format import FORMAT_NAME, claims_format, format_problem
from models.registry import model_from_arch, unwrap_model
from models.slowfast import (IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, VARIANTS, SlowFast,
                             SlowFastArch)
from utils.errors import UserError

_HEAD_PREFIX = "head."
_MAX_LISTED = 12  # names listed per category in an error message

Rules = list[tuple[str, str]]

# --- name tables: other projects' names -> this project's names (applied in order with re.sub) --------------

# PySlowFast (slowfast/models/video_model_builder.py, resnet_helper.py, stem_helper.py, head_helper.py).
_PYSLOWFAST_RULES: Rules = [
    (r"^s1\.pathway0_stem\.", "slow_stem."),
    (r"^s1\.pathway1_stem\.", "fast_stem."),
    (r"^s1_fuse\.conv_f2s\.", "fuse_stem.conv."),
    (r"^s1_fuse\.bn\.", "fuse_stem.bn."),
    (r"^s([234])_fuse\.conv_f2s\.", r"fuse_res\1.conv."),
    (r"^s([234])_fuse\.bn\.", r"fuse_res\1.bn."),
    (r"^s([2-5])\.pathway0_res(\d+)\.", r"slow_res\1.blocks.\2."),
    (r"^s([2-5])\.pathway1_res(\d+)\.", r"fast_res\1.blocks.\2."),
    (r"\.branch1\.", ".shortcut_conv."),
    (r"\.branch1_bn\.", ".shortcut_bn."),
    (r"\.branch2\.([abc])\.", r".conv_\1."),
    (r"\.branch2\.([abc])_bn\.", r".bn_\1."),
    (r"^head\.projection\.", "head.proj."),
]

# Caffe2 blob names -> PySlowFast names: the SlowFast subset of PySlowFast's get_name_convert_func (same
# order; its "." in "bn.s" etc. matches any character, so "a_bn_s" -> "a_bn.weight").
_CAFFE2_TO_PYSLOWFAST: Rules = [
    (r"^t_pool1_subsample_bn_(.*)", r"s1_fuse.bn.\1"),
    (r"^t_pool1_subsample_(.*)", r"s1_fuse.conv_f2s.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_bn_(.*)", r"s\1_fuse.bn.\3"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_(.*)", r"s\1_fuse.conv_f2s.\3"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway0_res\2.branch\3.\4_\5"),
    (r"^res_conv1_bn_(.*)", r"s1.pathway0_stem.bn.\1"),
    (r"^conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway0_res\2.branch\3_\4"),
    (r"^res_conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway1_res\2.branch\3.\4_\5"),
    (r"^t_res_conv1_bn_(.*)", r"s1.pathway1_stem.bn.\1"),
    (r"^t_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway1_res\2.branch\3_\4"),
    (r"^t_res_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"^pred_(.*)", r"head.projection.\1"),
    (r"(.*)bn.b\Z", r"\1bn.bias"),
    (r"(.*)bn.s\Z", r"\1bn.weight"),
    (r"(.*)bn.rm\Z", r"\1bn.running_mean"),
    (r"(.*)bn.riv\Z", r"\1bn.running_var"),
    (r"(.*)[\._]b\Z", r"\1.bias"),
    (r"(.*)[\._]w\Z", r"\1.weight"),
]

# PaddleVideo (paddlevideo/modeling/backbones/resnet_slowfast.py, heads/slowfast_head.py) -> PySlowFast names:
# the same module tree, with "_conv"/"_bn"/"_conv_f2s" attributes in stems and fusions, Paddle's BN buffer
# names, and the Recognizer's "backbone."/"head." prefixes.
_PADDLE_TO_PYSLOWFAST: Rules = [
    (r"^backbone\.", ""),
    (r"\._conv_f2s\.", ".conv_f2s."),
    (r"\._conv\.", ".conv."),
    (r"\._bn\.", ".bn."),
    (r"\._mean\Z", ".running_mean"),
    (r"\._variance\Z", ".running_var"),
]

# pytorchvideo (pytorchvideo/models/slowfast.py create_slowfast): Net.blocks = [stem+fusion, res2..res5 (each
# with fusion but the last), pool-concat, head].
_PYTORCHVIDEO_RULES: Rules = [
    (r"^blocks\.0\.multipathway_blocks\.0\.", "slow_stem."),
    (r"^blocks\.0\.multipathway_blocks\.1\.", "fast_stem."),
    (r"^blocks\.0\.multipathway_fusion\.", "fuse_stem."),
    *[(rf"^blocks\.{k}\.multipathway_blocks\.{p}\.res_blocks\.", f"{pathway}_res{k + 1}.blocks.")
      for k in range(1, 5) for p, pathway in ((0, "slow"), (1, "fast"))],
    *[(rf"^blocks\.{k}\.multipathway_fusion\.", f"fuse_res{k + 1}.") for k in (1, 2, 3)],
    (r"\.conv_fast_to_slow\.", ".conv."),
    (r"\.norm\.", ".bn."),
    (r"\.branch1_conv\.", ".shortcut_conv."),
    (r"\.branch1_norm\.", ".shortcut_bn."),
    (r"\.branch2\.conv_([abc])\.", r".conv_\1."),
    (r"\.branch2\.norm_([abc])\.", r".bn_\1."),
    (r"^blocks\.6\.proj\.", "head.proj."),
]

# MMAction2 (mmaction/models/backbones/resnet3d_slowfast.py ResNet3dSlowFast over resnet3d.py ResNet3d,
# heads/slowfast_head.py; mmcv ConvModule = .conv/.bn): layer1..layer4 are res2..res5, conv1/2/3 of a
# Bottleneck3d are conv_a/b/c, the slow pathway owns the lateral (fusion) convolutions.
_MMACTION2_RULES: Rules = [
    (r"^backbone\.slow_path\.conv1_lateral\.", "fuse_stem."),
    *[(rf"^backbone\.slow_path\.layer{k}_lateral\.", f"fuse_res{k + 1}.") for k in (1, 2, 3)],
    (r"^backbone\.(slow|fast)_path\.conv1\.", r"\1_stem."),
    *[(rf"^backbone\.(slow|fast)_path\.layer{k}\.", rf"\1_res{k + 1}.blocks.") for k in (1, 2, 3, 4)],
    (r"\.conv1\.conv\.", ".conv_a."),
    (r"\.conv1\.bn\.", ".bn_a."),
    (r"\.conv2\.conv\.", ".conv_b."),
    (r"\.conv2\.bn\.", ".bn_b."),
    (r"\.conv3\.conv\.", ".conv_c."),
    (r"\.conv3\.bn\.", ".bn_c."),
    (r"\.downsample\.conv\.", ".shortcut_conv."),
    (r"\.downsample\.bn\.", ".shortcut_bn."),
    (r"^cls_head\.fc_cls\.", "head.proj."),
]

# Entries that are not model weights and are dropped (reported as "ignored"): optimizer momenta and
# bookkeeping in Caffe2 blobs, Paddle's structured-name map, MMAction2's normalisation buffers (read as the
# file's input convention instead).
_IGNORED: dict[str, list[str]] = {
    "caffe2": [r"_momentum\Z", r"\Alr\Z", r"\Amodel_iter\Z"],
    "paddlevideo": [r"\AStructuredToParameterName@@\Z"],
    "mmaction2": [r"\Adata_preprocessor\."],
}


def _transpose_linear(state: dict[str, torch.Tensor]) -> None:
    # Paddle's Linear stores its weight as (in_features, out_features).
    weight = state.get("head.proj.weight")
    if weight is not None and weight.dim() == 2:
        state["head.proj.weight"] = weight.t()


def _slow_first_classifier(state: dict[str, torch.Tensor]) -> None:
    # MMAction2's SlowFastHead concatenates (fast, slow) pooled features; ours (slow, fast): move the fast
    # columns (as many as the fast pathway's res5 outputs) behind the slow ones.
    weight = state.get("head.proj.weight")
    if weight is None:
        return
    fast_res5 = [v for k, v in state.items() if re.fullmatch(r"fast_res5\.blocks\.\d+\.conv_c\.weight", k)]
    if not fast_res5:
        raise WeightsError("an MMAction2 classifier (cls_head.fc_cls.weight) without the fast pathway's layer4 "
                           "weights cannot be reordered to (slow, fast) features; use a complete checkpoint")
    fast_channels = fast_res5[0].shape[0]
    state["head.proj.weight"] = torch.cat([weight[:, fast_channels:], weight[:, :fast_channels]], dim=1)


@dataclass(frozen=True)
class _Converter:
    rules: Rules
    transform: Callable[[dict[str, torch.Tensor]], None] | None = None  # edits the renamed dict in place


_CONVERTERS: dict[str, _Converter] = {
    FORMAT_NAME: _Converter(rules=[]),
    "pyslowfast": _Converter(rules=_PYSLOWFAST_RULES),
    "pytorchvideo": _Converter(rules=_PYTORCHVIDEO_RULES),
    "caffe2": _Converter(rules=_CAFFE2_TO_PYSLOWFAST + _PYSLOWFAST_RULES),
    "paddlevideo": _Converter(rules=_PADDLE_TO_PYSLOWFAST + _PYSLOWFAST_RULES, transform=_transpose_linear),
    "mmaction2": _Converter(rules=_MMACTION2_RULES, transform=_slow_first_classifier),
}
FORMATS = tuple(_CONVERTERS)

# How each project feeds and evaluates its SlowFast (the SlowFastArch fields that describe it): normalisation
# on [0, 1] pixels, which Fast frames the Slow pathway takes, and the test-time head. PySlowFast DATA.MEAN/STD
# and PackPathway (linspace), ResNetBasicHead; pytorchvideo's hub transforms and PackPathway (its checkpoints
# are PySlowFast's); PaddleVideo's slowfast.yaml and PackOutput (linspace), SlowFastHead (PySlowFast's);
# MMAction2's ActionDataPreprocessor (ImageNet statistics on 0-255), nearest temporal interpolation by
# 1 / alpha in ResNet3dSlowFast.forward, and SlowFastHead's global average pooling.
_PYSLOWFAST_CONVENTIONS = dict(input_mean=KINETICS_MEAN, input_std=KINETICS_STD, slow_sampling="linspace",
                               head_pooling="reference")
_CONVENTIONS: dict[str, dict[str, Any]] = {
    "pyslowfast": _PYSLOWFAST_CONVENTIONS,
    "pytorchvideo": _PYSLOWFAST_CONVENTIONS,
    "caffe2": _PYSLOWFAST_CONVENTIONS,
    "paddlevideo": _PYSLOWFAST_CONVENTIONS,
    "mmaction2": dict(input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD, slow_sampling="nearest",
                      head_pooling="global"),
}


class WeightsError(UserError, ValueError):
    """A weights file cannot be read, is not a known format, or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the file.
        source_format: one of :data:`FORMATS`.
        loaded: model parameter/buffer names that received a value.
        missing: model names the file has no value for (left as they were).
        unexpected: file entries with no place in the model (``"file name -> converted name"`` when renamed).
        mismatched: ``(model name, file shape, model shape)`` for entries whose shapes differ (not loaded).
        ignored: file entries that are not weights (optimizer momenta, name maps).
        reinitialized: head parameters re-initialised instead of loaded (``reinit_head=True``).
        input_conventions: how the file's project feeds and evaluates the model (the ``SlowFastArch`` fields
            ``input_mean``, ``input_std``, ``slow_sampling``, ``head_pooling``, and what the file records of
            ``alpha``, ``train_crop``, ``dropout``); empty for a bare state dict of this project.
            :func:`load_pretrained` builds the model with them; :func:`load_weights` only loads weights and
            ``summary`` names those that differ from the model's.
        model_conventions: the same fields of the model loaded into, for that comparison.
    """

    path: str
    source_format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    input_conventions: dict[str, Any] = field(default_factory=dict)
    model_conventions: dict[str, Any] = field(default_factory=dict)

    @property
    def convention_differences(self) -> list[str]:
        """``"field: file value vs model value"`` for every input convention the model does not share."""
        return [f"{k}: file {v!r} vs model {self.model_conventions[k]!r}" for k, v in self.input_conventions.items()
                if k in self.model_conventions and _differs(v, self.model_conventions[k])]

    @property
    def complete(self) -> bool:
        """True when every model entry was loaded and every file entry was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def headline(self) -> str:
        """One line: the counts, and the first names of each non-empty category (for an error message)."""
        parts = [self.summary().splitlines()[0]]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape-mismatched (name, file, model)", self.mismatched)):
            if names:
                shown = ", ".join(str(n) for n in names[:4])
                parts.append(f"{title}: {shown}" + (f" ... (+{len(names) - 4})" if len(names) > 4 else ""))
        return "; ".join(parts)

    def summary(self) -> str:
        """A few lines for logs: counts, then the names in each non-empty category."""
        lines = [f"{self.path} ({self.source_format}): {len(self.loaded)} loaded, "
                 f"{len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
                 f"{len(self.ignored)} ignored, {len(self.reinitialized)} re-initialised"]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape-mismatched (name, file, model)", self.mismatched),
                             ("re-initialised", self.reinitialized)):
            if names:
                shown = ", ".join(str(n) for n in names[:_MAX_LISTED])
                more = f" ... (+{len(names) - _MAX_LISTED})" if len(names) > _MAX_LISTED else ""
                lines.append(f"  {title}: {shown}{more}")
        if self.convention_differences:
            lines.append("  the file's input conventions differ from the model's (models.load_pretrained builds the "
                         "model with the file's): " + "; ".join(self.convention_differences))
        return "\n".join(lines)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) > 1e-6
    return a != b


# --- reading files safely -----------------------------------------------------------------------------------

def _numpy_multiarray() -> Any:
    # numpy >= 2 moved numpy.core to numpy._core (numpy.core still imports, with a DeprecationWarning).
    core = getattr(np, "_core", None)
    return core.multiarray if core is not None else np.core.multiarray


# The only globals a pickle of numpy arrays needs. ``_codecs.encode`` is how Python 3 writes bytes in pickle
# protocol 2 (the array's raw data); Python 2 pickles (Caffe2 era) name ``numpy.core.multiarray``.
_PICKLE_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return _PICKLE_ALLOWED[(module, name)]()
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _numpy_globals_for_torch() -> list[Any]:
    # torch's weights_only unpickler also checks the class of every object it BUILDs, and numpy >= 1.25 gives
    # each dtype its own class (numpy.dtypes.Float32DType, ...): admit those of the numeric dtypes.
    numeric = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
               np.float16, np.float32, np.float64]
    dtype_classes = {type(np.dtype(t)) for t in numeric} - {np.dtype}
    multiarray = _numpy_multiarray()
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _torch_load(path: str) -> Any:
    numpy_globals = _numpy_globals_for_torch()
    try:
        with torch.serialization.safe_globals(numpy_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message starts with a generic paragraph; the lines after it name the refused global.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        boilerplate = ("Check the documentation", "Please file")
        specific = [line for line in lines[1:] if not line.startswith(boilerplate)]
        reason = " ".join(specific) or (lines[0] if lines else "unpickling failed")
        raise WeightsError(f"{path} needs more than tensors, numpy arrays and plain containers to load "
                           f"({reason}); refusing to run code from it. Re-save the weights as a plain "
                           f"state_dict (torch.save(model.state_dict(), path)) from a trusted "
                           f"environment") from err
    except Exception as err:  # a truncated zip, a torch file from a future version, ...
        raise WeightsError(f"{path} could not be read by torch.load: {err}") from err


def read_weights_file(path: str | os.PathLike) -> Any:
    """The object stored in a weights file, read without running code from it.

    Args:
        path: a torch file (zip or legacy format) or a plain pickle (Caffe2 ``.pkl``, Paddle ``.pdparams``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path!r} does not exist")
    if zipfile.is_zipfile(path):
        return _torch_load(path)
    # Not a zip: either a plain pickle, or torch's legacy format (a pickled magic number, then more pickles).
    with open(path, "rb") as f:
        try:
            first = _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            if "is not allowed" in str(err):
                needed = err.args[0].split(" is ")[0]
                raise WeightsError(f"{path} is a pickle that needs {needed}; only numpy arrays, numpy "
                                   f"scalars and plain containers are accepted, so nothing from it was "
                                   f"run") from err
            raise WeightsError(f"{path} is neither a torch checkpoint nor a readable pickle: {err}") from err
        except Exception as err:
            raise WeightsError(f"{path} is neither a torch checkpoint nor a readable pickle: {err}") from err
    if isinstance(first, int) and first == torch.serialization.MAGIC_NUMBER:
        return _torch_load(path)
    return first


# --- format detection and conversion ------------------------------------------------------------------------

def _strip_wrappers(name: str) -> str:
    # DDP ("module.") and torch.compile ("_orig_mod.") prefixes, in any order.
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


def _detect(state: dict[str, Any], path: str) -> str:
    keys = [_strip_wrappers(k) for k in state if isinstance(k, str)]
    if any(k.startswith(("slow_stem.", "fast_stem.", "fuse_stem.")) for k in keys):
        return FORMAT_NAME
    if any(".multipathway_blocks." in k for k in keys):
        return "pytorchvideo"
    if any(k.startswith(("backbone.slow_path.", "backbone.fast_path.")) for k in keys):
        return "mmaction2"
    if any(k.endswith(("._mean", "._variance")) or "._conv" in k for k in keys):
        return "paddlevideo"
    if any(k.startswith(("s1.pathway0_stem.", "s1_fuse.")) for k in keys):
        return "pyslowfast"
    if any(re.match(r"(t_)?(conv1_|res_conv1_|res\d+_\d+_branch)", k) for k in keys):
        return "caffe2"
    sample = ", ".join(repr(k) for k in keys[:5])
    raise WeightsError(f"{path}: cannot tell which format these weights are in (first names: {sample}); "
                       f"accepted: {list(FORMATS)}")


@dataclass
class _Source:
    """What a weights file holds, once unwrapped."""

    format: str
    state: dict[str, Any]  # flat name -> value, the file's names
    model_name: str | None = None  # this project's checkpoints: model_name / model_args
    model_args: dict[str, Any] | None = None
    recorded: dict[str, Any] = field(default_factory=dict)  # SlowFastArch fields the file's metadata records


def _unwrap_checkpoint(obj: Any, path: str) -> _Source:
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    if claims_format(obj):  # this project's checkpoint (models/checkpoint_format.py)
        problem = format_problem(obj)
        if problem is not None:
            raise WeightsError(f"{path} {problem}")
        return _Source(FORMAT_NAME, obj["model"], obj.get("model_name"), dict(obj.get("model_args") or {}))
    if isinstance(obj.get("blobs"), dict):
        return _Source("caffe2", obj["blobs"])
    wrapper = obj
    for key in ("model_state", "state_dict", "model"):  # PySlowFast/pytorchvideo hub, MMAction2, others
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    fmt = _detect(obj, path)
    recorded = {}
    if fmt == "pyslowfast":
        recorded = _pyslowfast_recorded(wrapper.get("cfg"))
    elif fmt == "mmaction2":
        recorded = _mmaction2_recorded(wrapper.get("meta"), obj)
    return _Source(fmt, obj, recorded=recorded)


def _pyslowfast_recorded(cfg: Any) -> dict[str, Any]:
    """Arch fields from a PySlowFast checkpoint's ``cfg`` (``cfg.dump()``, YAML), where it has them."""
    try:
        cfg = yaml.safe_load(cfg) if isinstance(cfg, str) else None
    except yaml.YAMLError:
        return {}
    if not isinstance(cfg, dict):
        return {}
    recorded = {}
    for section, key, arch_field in (("SLOWFAST", "ALPHA", "alpha"), ("DATA", "TRAIN_CROP_SIZE", "train_crop"),
                                     ("DATA", "MEAN", "input_mean"), ("DATA", "STD", "input_std"),
                                     ("MODEL", "DROPOUT_RATE", "dropout")):
        value = (cfg.get(section) or {}).get(key) if isinstance(cfg.get(section), dict) else None
        if value is not None:
            recorded[arch_field] = tuple(value) if isinstance(value, list) else value
    return recorded


def _mmaction2_recorded(meta: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Arch fields from an MMAction2 checkpoint: alpha (``speed_ratio``) from the config text its ``meta`` keeps
    (``cfg`` in MMAction2 1.x, ``config`` in 0.x), normalisation from ``data_preprocessor.mean/std`` buffers."""
    recorded: dict[str, Any] = {}
    text = next((meta[k] for k in ("cfg", "config") if isinstance(meta, dict) and isinstance(meta.get(k), str)), "")
    match = re.search(r"speed_ratio\s*=\s*(\d+)", text)
    if match:
        recorded["alpha"] = int(match.group(1))
    for name, arch_field in (("data_preprocessor.mean", "input_mean"), ("data_preprocessor.std", "input_std")):
        tensor = _as_tensor(state.get(name))
        if tensor is not None and tensor.numel() == 3:
            recorded[arch_field] = tuple(float(v) / 255 for v in tensor.flatten())  # stored on 0-255 pixels
    return recorded


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _rename(name: str, rules: Rules) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _convert(fmt: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(this project's name -> tensor, this project's name -> file name, ignored file names)."""
    converter = _CONVERTERS[fmt]
    ignore = [re.compile(p) for p in _IGNORED.get(fmt, [])]
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    for file_name, value in state.items():
        tensor = _as_tensor(value)
        if not isinstance(file_name, str) or tensor is None or any(p.search(file_name) for p in ignore):
            ignored.append(str(file_name))
            continue
        name = _rename(_strip_wrappers(file_name), converter.rules)
        converted[name] = tensor
        source[name] = file_name
    if converter.transform is not None:
        converter.transform(converted)
    return converted, source, ignored


def _conventions(source: _Source) -> dict[str, Any]:
    if source.format == FORMAT_NAME:
        keys = ("input_mean", "input_std", "slow_sampling", "head_pooling", "alpha", "train_crop", "dropout")
        return {k: source.model_args[k] for k in keys if source.model_args and k in source.model_args}
    return {**_CONVENTIONS[source.format], **source.recorded}


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 reinit_head: bool = False) -> LoadReport:
    """Load a weights file (format detected from its content) into ``model``.

    Nothing is changed unless the load is accepted: a strict load that does not fit raises before touching
    the model. BatchNorm's ``num_batches_tracked`` counters are never reported missing (only PyTorch files
    have them). Only weights are loaded: the file's input conventions (``report.input_conventions``) are not
    applied to ``model.arch``; :func:`load_pretrained` builds a model that has them.

    Args:
        model: a model from :func:`models.create_model` (DDP/compile wrappers are unwrapped).
        path: the weights file (see the module docstring for the accepted formats).
        strict: refuse any missing, unexpected or shape-mismatched entry (after ``reinit_head``).
        reinit_head: when the file's classifier has another shape (another class count), re-initialise the
            model's classifier instead of loading it, for fine-tuning; it is reported in ``reinitialized``.

    Returns:
        A :class:`LoadReport`.
    """
    path = os.fspath(path)
    return _load_source(unwrap_model(model), _unwrap_checkpoint(read_weights_file(path), path), path, strict,
                        reinit_head)


def _load_source(model: nn.Module, source: _Source, path: str, strict: bool, reinit_head: bool) -> LoadReport:
    converted, names_in_file, ignored = _convert(source.format, source.state)
    target = model.state_dict()
    arch = getattr(model, "arch", None)
    conventions = _conventions(source)
    report = LoadReport(path=path, source_format=source.format, ignored=ignored, input_conventions=conventions,
                        model_conventions={k: getattr(arch, k) for k in conventions if hasattr(arch, k)})

    for name, tensor in list(converted.items()):
        if name not in target:
            shown = names_in_file[name] if names_in_file[name] == name else f"{names_in_file[name]} -> {name}"
            report.unexpected.append(shown)
            del converted[name]
            continue
        if tensor.shape != target[name].shape:
            report.mismatched.append((name, tuple(tensor.shape), tuple(target[name].shape)))
            del converted[name]
    mismatched_names = {m[0] for m in report.mismatched}
    report.missing = [n for n in target if n not in converted and n not in mismatched_names
                      and not n.endswith("num_batches_tracked")]

    head_mismatch = [m for m in report.mismatched if m[0].startswith(_HEAD_PREFIX)]
    if reinit_head and head_mismatch:
        report.reinitialized = [m[0] for m in head_mismatch]
        report.mismatched = [m for m in report.mismatched if not m[0].startswith(_HEAD_PREFIX)]

    if strict and not report.complete:
        fixes = ["pass strict=False to load what fits"]
        if head_mismatch and not reinit_head:
            fixes.insert(0, "pass reinit_head=True to fine-tune with a new classifier")
        model_name = getattr(model, "model_name", type(model).__name__)
        if source.model_name and source.model_name != model_name:
            fixes.insert(0, f"the checkpoint is a {source.model_name}: rebuild it with "
                            f"models.model_from_arch(ckpt['model_name'], ckpt['model_args'])")
        elif source.format != FORMAT_NAME and report.mismatched + report.missing + report.unexpected:
            fixes.insert(0, f"models.load_pretrained({path!r}) builds the architecture the file fits")
        raise WeightsError(f"weights do not fit {model_name}: {report.headline()}; Fix: " + "; or ".join(fixes))

    model.load_state_dict(converted, strict=False)
    report.loaded = sorted(converted)
    if report.reinitialized:
        model.head.reset_parameters()
    return report


# --- models built from the weights file ---------------------------------------------------------------------

# Published SlowFast models outside the registered variants, for telling alpha from the weights: MMAction2's
# slowfast_r101_8xb8-8x8x1 keeps the R50 8x8 fusion kernel 7 (PySlowFast's R101 8x8 has 5).
_OTHER_PUBLISHED: list[tuple[str, dict[str, Any]]] = [
    ("MMAction2 slowfast_r101_8x8", dict(depths=(3, 4, 23, 3), width=64, beta_inv=8, fusion_kernel=7, alpha=4)),
]
# Fields that tell published architectures apart in the weights (alpha is not among them: a stride has no
# tensor, so it comes from the file's metadata or from the published model these fields single out).
_MATCHED = ("depths", "width", "beta_inv", "fusion_kernel")


class _NoFit(Exception):
    """The state dict is not a SlowFast this project can build; the message says what is missing."""


def _infer_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The SlowFastArch fields the tensor shapes determine (this project's names)."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in state:
            raise _NoFit(f"no {name!r}")
        return tuple(state[name].shape)

    slow_stem, fast_stem, fuse = shape("slow_stem.conv.weight"), shape("fast_stem.conv.weight"), \
        shape("fuse_stem.conv.weight")
    if len(slow_stem) != 5 or len(fast_stem) != 5 or len(fuse) != 5:
        raise _NoFit(f"stem/fusion kernels {slow_stem}, {fast_stem}, {fuse} are not 3D convolutions")
    width, in_channels, fast_width = slow_stem[0], slow_stem[1], fast_stem[0]
    if width % fast_width or fuse[0] % fuse[1]:
        raise _NoFit(f"slow width {width}, fast width {fast_width} and fusion {fuse[1]}->{fuse[0]} channels "
                     f"are not whole ratios")
    arch: dict[str, Any] = dict(width=width, in_channels=in_channels, beta_inv=width // fast_width,
                                fast_time_diff=fast_stem[1] == 2 * in_channels,
                                slow_stem_kernel=slow_stem[2:], fast_stem_kernel=fast_stem[2:],
                                fusion_kernel=fuse[2], fusion_ratio=fuse[0] // fuse[1],
                                lateral_norm="fuse_stem.bn.weight" in state,
                                num_classes=shape("head.proj.weight")[0])
    depths, slow_kernels, fast_kernels = [], [], []
    for stage in ("res2", "res3", "res4", "res5"):
        blocks = {}
        for pathway, kernels in (("slow", slow_kernels), ("fast", fast_kernels)):
            found = {int(m.group(1)) for k in state
                     if (m := re.match(rf"{pathway}_{stage}\.blocks\.(\d+)\.conv_a\.weight\Z", k))}
            if not found or found != set(range(len(found))):
                raise _NoFit(f"{pathway}_{stage} blocks {sorted(found)} are not 0..n-1")
            temporal = {shape(f"{pathway}_{stage}.blocks.{i}.conv_a.weight")[2] for i in found}
            if len(temporal) != 1:
                raise _NoFit(f"{pathway}_{stage} mixes temporal kernels {sorted(temporal)}")
            kernels.append(temporal.pop())
            blocks[pathway] = len(found)
        if blocks["slow"] != blocks["fast"]:
            raise _NoFit(f"{stage} has {blocks['slow']} slow and {blocks['fast']} fast blocks")
        depths.append(blocks["slow"])
    inner, out = shape("slow_res2.blocks.0.conv_a.weight")[0], shape("slow_res2.blocks.0.conv_c.weight")[0]
    arch.update(depths=tuple(depths), slow_temporal_kernels=tuple(slow_kernels),
                fast_temporal_kernels=tuple(fast_kernels), expansion=out // inner)
    return arch


def _published_alpha(arch: dict[str, Any]) -> int | None:
    candidates = [(name, asdict(variant)) for name, variant in VARIANTS.items()] + _OTHER_PUBLISHED
    alphas = {fields["alpha"] for _, fields in candidates if all(fields[k] == arch[k] for k in _MATCHED)}
    return alphas.pop() if len(alphas) == 1 else None


def _closest_variant(arch: SlowFastArch) -> str:
    """The registered variant that differs from ``arch`` in the fewest fields (the model's registry name)."""
    ours = asdict(arch)
    return min(VARIANTS, key=lambda name: sum(_differs(v, ours[k]) for k, v in asdict(VARIANTS[name]).items()))


def load_pretrained(path: str | os.PathLike, num_classes: int | None = None,
                    **overrides: Any) -> tuple[SlowFast, LoadReport]:
    """Build the model a weights file fits and load it (strictly).

    This project's checkpoints rebuild the model they record (``model_name`` / ``model_args``). For the other
    formats, and bare state dicts, the architecture comes from the tensor shapes: depth from the block counts,
    width and beta_inv from the stem channels, fusion kernel and channel ratio from the fusion convolution,
    lateral type from the presence of its BN, temporal kernels, class count from the classifier. Alpha (a
    stride, which no tensor holds) comes from the file's metadata where it has some (PySlowFast ``cfg``
    ``SLOWFAST.ALPHA``, MMAction2 ``meta`` ``speed_ratio``), else from the published model the shapes single out
    (R50 fusion kernel 5: 4x16, alpha 8; R50 kernel 7: 8x8, alpha 4; R101: alpha 4; slowfast_tiny: alpha 4).
    The source project's input conventions and test-time head are recorded in ``model.arch`` (``input_mean``,
    ``input_std``, ``slow_sampling``, ``head_pooling``), and ``train_crop`` / ``dropout`` where the file records
    them (default 224: every published Kinetics SlowFast trains at 224).

    Args:
        path: a weights file in any format :func:`load_weights` reads.
        num_classes: the classifier size wanted; None keeps the file's. Another count builds a fresh classifier
            (``report.reinitialized``) for fine-tuning.
        **overrides: SlowFastArch fields to set over what the file says (e.g. ``alpha=4`` when neither the
            metadata nor the shapes tell it, ``head_pooling="global"``).

    Returns:
        ``(model, report)``: the model in eval mode, with ``model.model_name`` the closest registered variant
        (``model_from_arch(model.model_name, asdict(model.arch))`` rebuilds it), and the :class:`LoadReport`.

    Raises:
        WeightsError: unreadable file, unknown format, or weights that fit no SlowFast architecture (naming what
            was recognised and the fix).
    """
    path = os.fspath(path)
    source = _unwrap_checkpoint(read_weights_file(path), path)
    valid = {f.name for f in dataclass_fields(SlowFastArch)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise WeightsError(f"unknown architecture override(s) {unknown}; valid fields: {sorted(valid)}")
    recognised: dict[str, Any] = {"format": source.format}
    try:
        if source.model_name and source.model_args is not None:
            name, fields = source.model_name, {**source.model_args, **overrides}
            recognised.update(model_name=name)
            file_classes = fields.get("num_classes")
        else:
            converted, _, _ = _convert(source.format, source.state)
            inferred = _infer_arch(converted)
            recognised.update(inferred)
            file_classes = inferred["num_classes"]
            fields = {**inferred, **_conventions(source), **overrides}
            if "alpha" not in fields:
                alpha = _published_alpha(inferred)
                if alpha is None:
                    raise _NoFit("its alpha (the fusion stride, which no tensor holds) matches no published model "
                                 "and the file does not record it; pass alpha=N")
                fields["alpha"] = alpha
            name = _closest_variant(SlowFastArch(**{k: v for k, v in fields.items() if k != "num_classes"}))
        if num_classes is not None:
            fields["num_classes"] = int(num_classes)
        model = model_from_arch(name, fields)
    except (_NoFit, ValueError, TypeError) as err:
        raise WeightsError(f"{path} fits no SlowFast architecture this project builds ({err}); recognised: "
                           f"{_describe(recognised)}. Fix: pass the missing SlowFastArch fields as "
                           f"load_pretrained(path, field=value), or build the model and use "
                           f"load_weights(model, path, strict=False)") from None
    reinit = num_classes is not None and num_classes != file_classes
    try:
        report = _load_source(model, source, path, strict=True, reinit_head=reinit)
    except WeightsError as err:
        raise WeightsError(f"{path} fits no SlowFast architecture this project builds; recognised: "
                           f"{_describe(recognised)}, built {name} with {asdict(model.arch)}, which does not take "
                           f"the weights:\n{err}") from None
    return model.eval(), report


def _describe(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in fields.items())
