"""Training curves: ``curves.png`` in the run folder, redrawn after every epoch from ``train_log.jsonl``.

Three panels: loss (training mean per epoch, validation), learning rate (at every logged iteration, so the
warm-up and the cosine show), top-1 (training per epoch, validation). The data come from the run's own log
(:class:`engine.meters.RunLog`), so a resumed run draws its whole history: each ``start`` record (written when a
run starts or resumes, with the epoch it starts from) drops the records of later epochs that came before it
(an epoch logged just before a crash and trained again after the resume counts once; a fresh ``--overwrite``
run starts its curves anew).

Drawing uses matplotlib's Agg canvas directly (no pyplot, no global backend change in the caller's process) and
the PNG is written atomically (:mod:`utils.atomic`). matplotlib is optional (the ``bench`` extra): without it
:func:`write_curves` returns None and the caller logs one line.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.atomic import write_bytes

CURVES_NAME = "curves.png"


@dataclass
class CurveSeries:
    """What the curves show, one value per epoch (validation: per validated epoch)."""

    epochs: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_top1: list = field(default_factory=list)
    lr_x: list = field(default_factory=list)  # fractional epochs of the logged iterations
    lr: list = field(default_factory=list)
    val_epochs: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_top1: list = field(default_factory=list)


def read_series(log_path: str | os.PathLike) -> CurveSeries:
    """The series of ``train_log.jsonl`` (see the module docstring for how restarts are read).

    Args:
        log_path: the run's ``train_log.jsonl``; lines that are not JSON (a line cut by a crash) are skipped.
    """
    epochs: dict[int, dict] = {}
    vals: dict[int, dict] = {}
    iters: dict[tuple[int, int], dict] = {}
    path = Path(log_path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        kind, epoch = record.get("kind"), record.get("epoch")
        if kind == "start":
            start = int(record.get("epoch") or 0)
            for table in (epochs, vals):
                for key in [k for k in table if k > start]:
                    del table[key]
            for key in [k for k in iters if k[0] > start]:
                del iters[key]
        elif kind == "epoch" and epoch is not None:
            epochs[int(epoch)] = record
        elif kind == "val" and epoch is not None:
            vals[int(epoch)] = record
        elif kind == "iter" and epoch is not None and record.get("iter") is not None:
            iters[(int(epoch), int(record["iter"]))] = record
    series = CurveSeries()
    for epoch in sorted(epochs):
        series.epochs.append(epoch)
        series.train_loss.append(epochs[epoch].get("loss"))
        series.train_top1.append(epochs[epoch].get("top1"))
    for epoch in sorted(vals):
        series.val_epochs.append(epoch)
        series.val_loss.append(vals[epoch].get("loss"))
        series.val_top1.append(vals[epoch].get("top1"))
    for (epoch, it) in sorted(iters):
        record = iters[(epoch, it)]
        if record.get("lr") is None:
            continue
        series.lr_x.append(epoch - 1 + it / max(int(record.get("iters") or it), 1))
        series.lr.append(record["lr"])
    return series


def _plottable(xs: list, ys: list) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def render_png(series: CurveSeries, title: str = "") -> Optional[bytes]:
    """The curves as PNG bytes; None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(13, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, lr_ax, top1_ax = figure.subplots(1, 3)
    style = dict(marker="o", markersize=3)
    loss_ax.plot(*_plottable(series.epochs, series.train_loss), label="train", **style)
    if series.val_epochs:
        loss_ax.plot(*_plottable(series.val_epochs, series.val_loss), label="val", **style)
    loss_ax.set(title="loss", xlabel="epoch")
    lr_ax.plot(series.lr_x, series.lr)
    lr_ax.set(title="learning rate", xlabel="epoch")
    top1_ax.plot(*_plottable(series.epochs, [None if v is None else 100 * v for v in series.train_top1]),
                 label="train", **style)
    if series.val_epochs:
        top1_ax.plot(*_plottable(series.val_epochs, [None if v is None else 100 * v for v in series.val_top1]),
                     label="val", **style)
    top1_ax.set(title="top-1 (%)", xlabel="epoch")
    for axis in (loss_ax, top1_ax):
        axis.legend(loc="best")
    for axis in (loss_ax, lr_ax, top1_ax):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_curves(output_dir: str | os.PathLike, title: str = "") -> Optional[tuple[Path, CurveSeries]]:
    """Redraw ``<output_dir>/curves.png`` from ``<output_dir>/train_log.jsonl`` (atomically).

    Returns:
        ``(path, series)``, or None when matplotlib is not installed (nothing written).

    Raises:
        OSError: the PNG could not be written (e.g. the disk is full); the previous PNG is intact.
    """
    directory = Path(output_dir)
    series = read_series(directory / "train_log.jsonl")
    png = render_png(series, title)
    if png is None:
        return None
    return write_bytes(directory / CURVES_NAME, png), series
