"""Training metrics out of the process: TensorBoard event files, a per-step JSONL, a console line; MFU peaks."""
from __future__ import annotations

import datetime
import json
import math
import sys
import time
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter

from exif_jax import storage

# Dense bf16 peak FLOP/s per *jax device* (a TPU v2/v3 device is one core, half a chip; later TPUs
# and GPUs are one chip). First substring match of the lower-cased device_kind wins, so the more
# specific names come first. MFU is measured against these whatever the compute dtype.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("tpu v2", 22.5e12), ("tpu v3", 61.5e12), ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12), ("tpu7x", 2307e12),
    ("gb200", 2500e12), ("b200", 2250e12), ("h200", 989e12), ("gh200", 989e12),
    ("h100 pcie", 756e12), ("h100", 989e12), ("a100", 312e12), ("l40s", 362e12),
    ("l4", 121e12), ("a10g", 70e12), ("v100", 125e12),
]


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device of this kind, or None (CPU, unknown kinds)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops
    return None


def measure_gemm_flops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on the first device (the CPU stand-in for a peak); median of `repeats`."""
    a = jax.device_put(np.ones((n, n), dtype), jax.devices()[0])
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.median(times))


class MetricsWriter:
    """Per-step rows -> workdir/metrics.jsonl + TensorBoard (workdir/tb) + a console line at each flush.

    `workdir` may be a local path, gs://… or s3://… (metrics.jsonl through storage.AppendLog; tensorboardX
    writes gs:// and s3:// event files itself, re-uploading the whole file at each flush).
    Only process 0 writes. Throughput covers the wall time between flushes (dispatch is asynchronous,
    so the device_get in the trainer's flush is where the host waits for the steps to finish)."""

    def __init__(self, workdir: str, *, total_steps: int, global_batch: int, flops_per_example: float | None,
                 num_devices: int, peak_per_device: float | None, enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.flops_per_example = flops_per_example
        self.peak_total = peak_per_device * num_devices if peak_per_device else None
        self._clock: tuple[float, int] | None = None
        self._tb = None
        self._jsonl = None
        if enabled:
            storage.makedirs(workdir)
            self._tb = SummaryWriter(storage.join(workdir, "tb"))
            self._jsonl = storage.AppendLog(storage.join(workdir, "metrics.jsonl"))

    def start_clock(self, step: int) -> None:
        """Time throughput from now, with `step` steps done (call after the compile step has finished)."""
        self._clock = (time.perf_counter(), step)

    def write(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Write per-step rows (each has "step"); returns the throughput numbers for the window."""
        perf: dict[str, float] = {}
        if not rows:
            return perf
        last = rows[-1]["step"]
        if self._clock is not None and last > self._clock[1]:
            dt = time.perf_counter() - self._clock[0]
            steps = last - self._clock[1]
            perf["img_per_sec"] = steps * self.global_batch / dt
            perf["sec_per_step"] = dt / steps
            if self.flops_per_example and self.peak_total:
                perf["mfu"] = perf["img_per_sec"] * self.flops_per_example / self.peak_total
            self._clock = (time.perf_counter(), last)
        if not self.enabled:
            return perf
        for row in rows:
            self._jsonl.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
            for k, v in row.items():
                if k != "step" and _finite_number(v):
                    self._tb.add_scalar(f"train/{k}", float(v), row["step"])
        for k, v in perf.items():
            self._tb.add_scalar(f"perf/{k}", v, last)
        self._jsonl.flush()
        self._tb.flush()
        self.console(rows[-1], perf)
        return perf

    def console(self, row: dict[str, Any], perf: dict[str, float]) -> None:
        """One progress line: step/total, loss, top-1, lr, img/s, MFU, ETA."""
        step = row["step"]
        parts = [f"step {step}/{self.total_steps}", f"loss {row.get('loss', float('nan')):.4f}",
                 f"i2t {row.get('i2t_top1', float('nan')):.3f} t2i {row.get('t2i_top1', float('nan')):.3f}",
                 f"lr {row.get('lr', float('nan')):.2e}"]
        if "img_per_sec" in perf:
            parts.append(f"{perf['img_per_sec']:,.1f} img/s")
            parts.append(f"MFU {perf['mfu']:.3f}" if "mfu" in perf else "MFU n/a")
            eta = (self.total_steps - step) * perf["sec_per_step"]
            parts.append(f"ETA {datetime.timedelta(seconds=round(eta))}")
        if row.get("nan_skips"):
            parts.append(f"non-finite skips {int(row['nan_skips'])}")
        log(" | ".join(parts))

    def close(self) -> None:
        """Flush and close the files."""
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and math.isfinite(float(v))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else str(float(v))  # JSON has no NaN
    return v


def log(msg: str) -> None:
    """Print on process 0 only, flushed (SLURM and pod logs are files)."""
    if jax.process_index() == 0:
        print(msg, file=sys.stdout, flush=True)
