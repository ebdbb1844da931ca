"""How every figure in the suite is taken: warm-up excluded, synchronised clocks, repeats, spread.

A measurement runs ``warmup`` calls that are thrown away, then ``repeats`` timed windows of ``iters``
calls each. Before reading the clock at either end of a window, the device is synchronised (CUDA work
is asynchronous, so a host clock alone would time the launches, not the work). Each window gives one
throughput figure (items per second); the result reports their median and spread.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch


def synchronize(device: Optional[torch.device | str] = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


@dataclass
class Measurement:
    """Throughput over repeated windows: ``values`` are items/s of each window, warm-up excluded."""

    unit: str
    values: list[float]
    items_per_window: float
    seconds: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) over the windows."""
        return min(self.values), max(self.values)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.values) < 4:
            return self.spread
        q = statistics.quantiles(self.values, n=4)
        return q[0], q[2]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(median=self.median, min=self.spread[0], max=self.spread[1], q1=self.iqr[0], q3=self.iqr[1],
                    repeats=len(self.values))
        return data


def measure(
    step: Callable[[], object], items_per_call: float, *, warmup: int = 3, repeats: int = 5, iters: int = 10,
    unit: str = "items/s", device: Optional[torch.device | str] = None,
) -> Measurement:
    """Time ``step`` (one call = ``items_per_call`` items).

    Args:
        step: the work; its return value is ignored.
        warmup: calls run first and excluded (compilation, autotuning, allocator growth, decoder setup).
        repeats: timed windows; the spread is taken over them.
        iters: calls per window.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    values, seconds = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        synchronize(device)
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        values.append(items_per_call * iters / elapsed)
    return Measurement(unit=unit, values=values, items_per_window=items_per_call * iters, seconds=seconds)


def measure_iterable(
    make_iter: Callable[[], object], items_of: Callable[[object], float], *, warmup: int = 2, repeats: int = 5,
    iters: int = 10, unit: str = "items/s", device: Optional[torch.device | str] = None,
    on_batch: Optional[Callable[[object], None]] = None, after_warmup: Optional[Callable[[], None]] = None,
) -> Measurement:
    """Time a stream (a loader): windows of ``iters`` batches pulled from one iterator.

    The iterator is re-made when exhausted (an epoch boundary), outside any timed window where possible.
    ``on_batch`` runs on each batch (e.g. a training step) inside the window.
    """
    iterator = iter(make_iter())

    def pull():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(make_iter())
            return next(iterator)

    for _ in range(warmup):
        batch = pull()
        if on_batch:
            on_batch(batch)
    synchronize(device)
    if after_warmup:
        after_warmup()
    values, seconds = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        items = 0.0
        for _ in range(iters):
            batch = pull()
            if on_batch:
                on_batch(batch)
            items += items_of(batch)
        synchronize(device)
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        values.append(items / elapsed)
    close = getattr(iterator, "close", None)
    if close is not None:  # stop the loader's workers and prefetching now, not when the garbage is collected
        close()
    return Measurement(unit=unit, values=values, items_per_window=items, seconds=seconds)
