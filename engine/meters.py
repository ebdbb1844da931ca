"""What a run reports: accuracy counts, running averages, console lines, JSON lines, TensorBoard.

Only the primary rank (rank 0) writes; the other ranks log warnings and errors only. Every periodic
line and epoch summary also goes, as one JSON object per line, to ``<output_dir>/train_log.jsonl``
(appended, so a resumed run continues the same file), and to TensorBoard event files under
``<output_dir>/tensorboard`` when ``tensorboard`` is importable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(is_primary: bool, output_dir: str | os.PathLike | None = None, name: str = "train") -> None:
    """Console logging (INFO on the primary rank, WARNING elsewhere) and ``<output_dir>/<name>.log``.

    Args:
        is_primary: whether this process is rank 0.
        output_dir: where the primary rank also writes a plain-text log; None for console only.
        name: the log file's stem.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_slowfast_handler", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO if is_primary else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    console._slowfast_handler = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if is_primary and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / f"{name}.log")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler._slowfast_handler = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)


@torch.no_grad()
def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)
) -> dict[int, torch.Tensor]:
    """Per-sample hit flags: ``{k: bool tensor (N,)}``, true where the label is among the top-k logits.

    Args:
        logits: (N, num_classes).
        labels: (N,) integer class indices.
        ks: the k values; a k above the class count is clamped to it (top-5 of 3 classes = always hit).
    """
    ks = list(ks)
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (N, k_max)
    hits = top.eq(labels.view(-1, 1))
    return {k: hits[:, : min(k, k_max)].any(dim=1) for k in ks}


class SmoothedValue:
    """A series' average over the last ``window`` values and over everything added (weighted by ``n``)."""

    def __init__(self, window: int = 20) -> None:
        self.recent: deque = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.recent.append(float(value))
        self.total += float(value) * n
        self.count += n

    @property
    def window_avg(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def reset(self) -> None:
        self.recent.clear()
        self.total = 0.0
        self.count = 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null marks "not measured / not finite"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunLog:
    """The primary rank's sinks: JSON lines file and (optional) TensorBoard; a no-op on other ranks.

    Args:
        output_dir: the run directory (``train_log.jsonl`` and ``tensorboard/`` go there).
        enabled: False on non-primary ranks.
        tensorboard: try to open a TensorBoard writer (skipped silently when not installed).
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "train_log.jsonl"
        self._handle = None
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra (pip install .[tensorboard])
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, kind: str, record: Mapping[str, Any], step: int | None = None) -> None:
        """Append ``{"kind": kind, **record}`` as one JSON line; scalars also go to TensorBoard.

        Args:
            kind: ``"iter"``, ``"epoch"`` or ``"val"`` (the TensorBoard tag prefix).
            record: numbers and strings.
            step: TensorBoard global step (the iteration count).
        """
        if not self.enabled:
            return
        line = {"kind": kind, **_jsonable(dict(record))}
        self._handle.write(json.dumps(line) + "\n")
        if self._writer is not None and step is not None:
            for key, value in line.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and key not in ("epoch", "iter")
                ):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
