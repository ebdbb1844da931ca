"""Export a SlowFast model to TorchScript or ONNX, for deployment without this project's code.

    python -m models.export -w output/demo/best.pt --format onnx --output slowfast.onnx
    python -m models.export -w SLOWFAST_8x8_R50.pyth -c configs/recognition/slowfast/slowfast_8x8.yaml \\
        --format torchscript --output slowfast_8x8.pt

The exported graph takes two inputs, in this order:

- ``slow``: (N, 3, T / alpha, H, W) float32, the Slow pathway's frames;
- ``fast``: (N, 3, T, H, W) float32, the Fast pathway's frames;

normalised as the model was trained (``data.mean`` / ``data.std`` of its configuration), and returns
``logits`` (N, num_classes) (softmax is the caller's). The batch dimension N is dynamic; T, H and W are
fixed at export (``--frames``, ``--size``: by default the model's training clip length and crop, taken from a
checkpoint's configuration, so the head pools exactly as in training).

Which model: this project's checkpoints rebuild their own architecture (``model_name`` / ``model_args``); for
other formats (PySlowFast, pytorchvideo, Caffe2, PaddleVideo, MMAction2) ``-c CONFIG`` names the model, or the
architecture is inferred from the weights file when :func:`models.weights.load_pretrained` recognises it.

ONNX: opset 17 by default, through torch's TorchScript-based exporter (``dynamo=False``; NOTE: the
torch.export-based exporter gives the same graph numerically, measured 6e-7 relative error on slowfast_tiny,
but took 37 s instead of 4 s here and needs the onnxscript package).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from models.checkpoint_format import model_spec
from models.registry import create_model, model_from_arch
from models.weights import WeightsError, load_weights, read_weights_file
from utils.atomic import atomic_path
from utils.errors import UserError, run_cli

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 17


class ExportError(UserError, RuntimeError):
    """The model cannot be exported as asked; the message names the value and the fix."""


class TwoPathways(nn.Module):
    """``forward(slow, fast)``: the network's ``[slow, fast]`` input as two named graph inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return self.model([slow, fast])  # (N, num_classes) logits


def model_for_export(weights: str | os.PathLike, config: Optional[str] = None,
                     overrides: Sequence[str] = ()) -> tuple[nn.Module, dict]:
    """The model ``weights`` holds, loaded strictly, in eval mode on the CPU, and the clip geometry to export.

    Args:
        weights: this project's checkpoint, or any format :func:`models.load_weights` reads.
        config: a recipe naming the model (needed for other formats unless the file itself says).
        overrides: ``-o key=value`` on top of the recipe (or of the checkpoint's own configuration).

    Returns:
        ``(model, geometry)`` with geometry ``{"frames": T, "size": crop}``.
    """
    from configs import load_config  # models may read configurations; configs never imports models

    path = Path(weights)
    if not path.is_file():
        raise ExportError(f"weights file {str(path)!r} does not exist; pass -w with a checkpoint or weights file")
    saved = None
    try:
        content = read_weights_file(path)
    except WeightsError:
        content = None
    spec = model_spec(content) if content is not None else None
    if isinstance(content, dict) and spec is not None and isinstance(content.get("config"), dict):
        saved = content["config"]
    cfg = load_config(config, overrides, base=None if config else saved, base_source=f"the configuration in {path}")
    if spec is not None and not config:
        model = model_from_arch(*spec)
    elif config or overrides:
        model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **dict(cfg.model.args or {}))
    else:
        try:
            from models.weights import load_pretrained
        except ImportError:
            load_pretrained = None
        if load_pretrained is None:
            raise ExportError(f"{str(path)!r} does not say which model it holds; pass the recipe it was trained "
                              f"with, e.g. -c configs/recognition/slowfast/slowfast.yaml")
        model, _ = load_pretrained(path)
        return model.eval(), {"frames": int(cfg.data.num_frames), "size": int(cfg.data.train_crop)}
    load_weights(model, path, strict=True)
    return model.eval(), {"frames": int(cfg.data.num_frames), "size": int(cfg.data.train_crop)}


def example_inputs(model: nn.Module, frames: int, size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(slow, fast)`` of the export geometry (the Slow frames as the loaders take them)."""
    alpha = int(model.arch.alpha)
    if frames % alpha:
        raise ExportError(f"--frames {frames} is not a multiple of the model's alpha {alpha}; use e.g. "
                          f"--frames {max(alpha, frames - frames % alpha)}")
    generator = torch.Generator().manual_seed(0)
    fast = torch.randn(batch, 3, frames, size, size, generator=generator)
    slow = fast[:, :, torch.linspace(0, frames - 1, frames // alpha).long()].contiguous()
    return slow, fast


def export(model: nn.Module, output: str | os.PathLike, fmt: str, *, frames: int, size: int,
           opset: int = MIN_OPSET) -> Path:
    """Write ``model`` (eval mode, CPU) to ``output`` as ``fmt`` (``onnx`` or ``torchscript``), atomically.

    Args:
        model: a SlowFast network (``model.arch`` gives alpha).
        output: the file to write.
        fmt: ``onnx`` or ``torchscript``.
        frames: T, the Fast pathway's frames; the Slow pathway gets T / alpha.
        size: H = W of the input frames.
        opset: ONNX opset (>= 17).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old; use {MIN_OPSET} or newer")
    wrapped = TwoPathways(model.float().eval()).eval()
    slow, fast = example_inputs(model, frames, size)
    output = Path(output)
    with torch.inference_mode(False), torch.no_grad(), atomic_path(output) as tmp:
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapped, (slow, fast), check_trace=False)
            traced.save(str(tmp))
        else:
            batch = {0: "batch"}
            torch.onnx.export(wrapped, (slow, fast), str(tmp), input_names=["slow", "fast"],
                              output_names=["logits"], dynamic_axes={"slow": batch, "fast": batch, "logits": batch},
                              opset_version=int(opset), dynamo=False)
    return output


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--weights", required=True, help="checkpoint or weights file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("-c", "--config", help="recipe naming the model (for weights that do not say)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--frames", type=int, default=None, help="T (default: the configuration's data.num_frames)")
    parser.add_argument("--size", type=int, default=None, help="H = W (default: data.train_crop)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, geometry = model_for_export(args.weights, args.config, args.override)
    frames = args.frames or geometry["frames"]
    size = args.size or geometry["size"]
    path = export(model, args.output, args.format, frames=frames, size=size, opset=args.opset)
    alpha = int(model.arch.alpha)
    print(f"wrote {path} ({args.format}): inputs slow (N, 3, {frames // alpha}, {size}, {size}) and fast "
          f"(N, 3, {frames}, {size}, {size}), output logits (N, {model.arch.num_classes})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
