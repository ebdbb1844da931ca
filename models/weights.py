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
========================  ===========================================================================

Every converter is a table of regular-expression renames into this project's parameter names (the
``_*_RULES`` tables and ``_CONVERTERS`` below), plus a value transform where a format stores a tensor
differently. Caffe2 and PaddleVideo names
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
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from models.checkpoint_format import FORMAT_NAME, claims_format, format_problem
from models.registry import unwrap_model
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

# Entries that are not model weights and are dropped (reported as "ignored"): optimizer momenta and
# bookkeeping in Caffe2 blobs, Paddle's structured-name map.
_IGNORED: dict[str, list[str]] = {
    "caffe2": [r"_momentum\Z", r"\Alr\Z", r"\Amodel_iter\Z"],
    "paddlevideo": [r"\AStructuredToParameterName@@\Z"],
}


def _transpose_linear(name: str, value: torch.Tensor) -> torch.Tensor:
    # Paddle's Linear stores its weight as (in_features, out_features).
    return value.t() if name == "head.proj.weight" and value.dim() == 2 else value


@dataclass(frozen=True)
class _Converter:
    rules: Rules
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None


_CONVERTERS: dict[str, _Converter] = {
    FORMAT_NAME: _Converter(rules=[]),
    "pyslowfast": _Converter(rules=_PYSLOWFAST_RULES),
    "pytorchvideo": _Converter(rules=_PYTORCHVIDEO_RULES),
    "caffe2": _Converter(rules=_CAFFE2_TO_PYSLOWFAST + _PYSLOWFAST_RULES),
    "paddlevideo": _Converter(rules=_PADDLE_TO_PYSLOWFAST + _PYSLOWFAST_RULES, transform=_transpose_linear),
}
FORMATS = tuple(_CONVERTERS)


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
    """

    path: str
    source_format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model entry was loaded and every file entry was used."""
        return not (self.missing or self.unexpected or self.mismatched)

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
        return "\n".join(lines)


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
    if any(k.endswith(("._mean", "._variance")) or "._conv" in k for k in keys):
        return "paddlevideo"
    if any(k.startswith(("s1.pathway0_stem.", "s1_fuse.")) for k in keys):
        return "pyslowfast"
    if any(re.match(r"(t_)?(conv1_|res_conv1_|res\d+_\d+_branch)", k) for k in keys):
        return "caffe2"
    sample = ", ".join(repr(k) for k in keys[:5])
    raise WeightsError(f"{path}: cannot tell which format these weights are in (first names: {sample}); "
                       f"accepted: {list(FORMATS)}")


def _unwrap_checkpoint(obj: Any, path: str) -> tuple[str, dict[str, Any], Any]:
    """(format, flat name -> value dict, the checkpoint's model_name or None)."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    if claims_format(obj):  # this project's checkpoint (models/checkpoint_format.py)
        problem = format_problem(obj)
        if problem is not None:
            raise WeightsError(f"{path} {problem}")
        return FORMAT_NAME, obj["model"], obj.get("model_name")
    if isinstance(obj.get("blobs"), dict):
        return "caffe2", obj["blobs"], None
    for key in ("model_state", "state_dict", "model"):  # PySlowFast/pytorchvideo hub, Lightning-style, others
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return _detect(obj, path), obj, None


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
        if converter.transform is not None:
            tensor = converter.transform(name, tensor)
        converted[name] = tensor
        source[name] = file_name
    return converted, source, ignored


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 reinit_head: bool = False) -> LoadReport:
    """Load a weights file (format detected from its content) into ``model``.

    Nothing is changed unless the load is accepted: a strict load that does not fit raises before touching
    the model. BatchNorm's ``num_batches_tracked`` counters are never reported missing (only PyTorch files
    have them).

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
    model = unwrap_model(model)
    fmt, state, checkpoint_model = _unwrap_checkpoint(read_weights_file(path), path)
    converted, source, ignored = _convert(fmt, state)
    target = model.state_dict()
    report = LoadReport(path=path, source_format=fmt, ignored=ignored)

    for name, tensor in list(converted.items()):
        if name not in target:
            shown = source[name] if source[name] == name else f"{source[name]} -> {name}"
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
        if checkpoint_model and checkpoint_model != model_name:
            fixes.insert(0, f"the checkpoint is a {checkpoint_model}: rebuild it with "
                            f"models.model_from_arch(ckpt['model_name'], ckpt['model_args'])")
        raise WeightsError(f"weights do not fit {model_name}:\n{report.summary()}\n"
                           f"Fix: " + "; or ".join(fixes))

    model.load_state_dict(converted, strict=False)
    report.loaded = sorted(converted)
    if report.reinitialized:
        model.head.reset_parameters()
    return report
