"""The GPU suite's bookkeeping: rows, sections under a time budget, timing and peak memory.

A row: name, value, unit, target, floor multiple (None where there is no floor), status ("ok",
"skipped: why", "error: what") and a note saying how it was measured. A section declares its
rows' names before it runs, so a section skipped for the budget, or one that fails, still
writes every one of its rows (with that status) and the suite goes on to the next section.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from gpu_models import sync

__all__ = ["Row", "Suite"]


@dataclass
class Row:
    name: str  # the measurement, as the issue names it
    value: float | None  # None unless status is "ok"
    unit: str
    target: str | None = None  # e.g. "<= 1.02", None where the issue sets none
    floor_multiple: float | None = None  # measured time / its FLOP floor, None where n/a
    status: str = "ok"
    note: str = ""  # how it was measured (steps, sizes, what was extrapolated)
    extra: dict = field(default_factory=dict)  # side numbers (both times, peak memory, ...)

    def as_json(self) -> dict:
        return asdict(self)


class Suite:
    """Collects rows; runs sections in order while ``budget_s`` lasts; times on ``device``."""

    def __init__(self, device: str, budget_s: float, repeats: int) -> None:
        self.device = torch.device(device)
        self.budget_s = budget_s
        self.repeats = repeats
        self.rows: list[Row] = []
        self.rate = None  # measured matmul FLOP/s (the "floor" section sets it)
        self.flops: dict[str, float] = {}  # FLOPs of one call per denoiser key
        self.started = time.perf_counter()
        self.section_seconds: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    # -- rows ------------------------------------------------------------------------------------
    def add(self, name: str, value: float, unit: str, target: str | None = None, floor_s: float | None = None,
            seconds: float | None = None, note: str = "", **extra) -> Row:
        """A measured row; with ``floor_s`` and ``seconds`` its floor multiple is seconds / floor_s."""
        multiple = None if floor_s is None or seconds is None else seconds / floor_s
        row = Row(name, float(value), unit, target, multiple, "ok", note, extra)
        self.rows.append(row)
        return row

    def skip(self, name: str, why: str, unit: str = "", target: str | None = None) -> None:
        self.rows.append(Row(name, None, unit, target, None, f"skipped: {why}"))

    def section(self, title: str, names: list[str], fn: Callable[[], None], cost_s: float = 0.0) -> None:
        """Run ``fn`` (which adds the rows ``names``) unless less than ``cost_s`` of the budget is
        left; rows it did not add become "skipped: budget" or "error: ..." rows."""
        before = len(self.rows)
        start = time.perf_counter()
        if self.elapsed() + cost_s > self.budget_s:
            status = f"skipped: budget (--budget-s {self.budget_s:g}; {self.elapsed():.0f} s used, ~{cost_s:.0f} s needed)"
        else:
            status = None
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - one failed section must not lose the others' rows
                status = f"error: {type(err).__name__}: {err}".splitlines()[0][:300]
                traceback.print_exc()
            finally:
                self.free()
        done = {row.name for row in self.rows[before:]}
        for name in names:
            if name not in done:
                self.rows.append(Row(name, None, "", None, None, status or "error: the section did not measure it"))
        self.section_seconds[title] = time.perf_counter() - start
        print(f"[{self.elapsed():6.1f} s] {title}: {self.section_seconds[title]:.1f} s", flush=True)

    def floor(self, key: str, calls: float) -> float:
        """Seconds of ``calls`` calls of denoiser ``key`` at the measured matmul rate."""
        return calls * self.flops[key] / self.rate

    # -- measuring -------------------------------------------------------------------------------
    def timed(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn``, the device synchronised before and after."""
        sync(self.device)
        start = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - start

    def alternating(self, *fns, repeats: int | None = None) -> list[float]:
        """Median seconds of each function, timed in turn ``repeats`` times (after one warm-up call
        of each): a busy device slows every function of a round alike."""
        for fn in fns:
            fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats or self.repeats):
            for k, fn in enumerate(fns):
                times[k].append(self.timed(fn))
        return [statistics.median(t) for t in times]

    def paired(self, fn_a, fn_b, repeats: int | None = None) -> tuple[float, float]:
        """Median seconds of two functions timed alternately (after one warm-up call of each)."""
        a, b = self.alternating(fn_a, fn_b, repeats=repeats)
        return a, b

    @contextlib.contextmanager
    def peak(self):
        """Yields a dict that holds, after the block, ``peak_gib``: the device's peak allocated memory
        during it (CUDA), or the process's peak resident memory growth (CPU, ``_rss``)."""
        out: dict = {}
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield out
            sync(self.device)
            out["peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            out["memory"] = "CUDA peak allocated"
        else:
            from _rss import peak_mib, start_peak

            before = start_peak()
            yield out
            out["peak_gib"] = (peak_mib() - before) / 1024
            out["memory"] = "peak RSS growth over the block (CPU)"

    def free(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
