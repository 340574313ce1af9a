"""`exif-jax build-data --engine ray`: build-data's two passes as Ray tasks, on a laptop or a cluster.

The driver runs build.build_dataset unchanged (listing, dedup by sha256, the shard plan, resume from
sidecars, summary.json); only the parallel work is sent to Ray: pass 1 hashes chunks of inputs with
build._hash, pass 2 runs build.build_shard, the very function the local process pool runs, so the shards,
pixel files, sidecars and summary are byte for byte those of `--engine local` (tests/test_build_ray.py).

Ray tasks, not Ray Data: the unit of work is a shard that one writer must own from its temporary name to
its rename, and build_shard already is that unit. Tasks give exactly that, plus what the build needs from an
engine: a task whose worker process dies is re-run (max_retries; the rename-when-complete leaves nothing
partial behind), each task's sidecar comes back to the driver for the summary, and a re-run after the driver
dies skips the shards whose sidecars exist. Ray Data would map rows through its own blocks and datasinks,
which do not write this layout, and would add an object-store round trip for every photo's bytes.

Driver memory: the Items of the listing and the plan (one Item per input photo, `driver_bytes_per_photo`
in benchmarks/build_data.py), plus at most `in_flight` task results; photo bytes never reach the driver.

On a cluster every worker reads `Item.src` and writes the output folder itself: both must be a shared file
system (or object storage once exif_jax.storage serves data/inputs.open_path and the writers); relative
local paths are made absolute on the driver, and exif_jax must be installed on the workers (the image).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

from exif_jax.data import build
from exif_jax.data.inputs import REMOTE_PREFIXES

HASH_CHUNK = 32   # inputs per pass-1 task: a task costs ~1 ms of scheduling, hashing 32 photos ~50-100 ms
MAX_RETRIES = 3   # re-runs of a task whose worker process died (node lost, OOM kill, preemption)


def _hash_chunk(items: Sequence[build.Item]) -> list[tuple[str, str]]:
    """Pass 1 on a worker: (sha256, skip reason) of each item, in order."""
    return [(it.sha256, reason) for it, reason in map(build._hash, items)]


def _build_shard(path: str, chunk: Sequence[build.Item], settings: build.Settings, digest: str) -> dict:
    """Pass 2 on a worker: build.build_shard itself."""
    return build.build_shard(path, chunk, settings, digest)


def _absolute(item: build.Item) -> build.Item:
    # A worker's working directory is not the driver's (and on a cluster not even its machine).
    if item.src.startswith(REMOTE_PREFIXES) or os.path.isabs(item.src):
        return item
    return dataclasses.replace(item, src=os.path.abspath(item.src))


class RayEngine:
    """build.Engine on Ray: joins the cluster at `address`, or starts a local Ray with `num_cpus` CPUs
    (default: all cores) when none is running in this process."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES, hash_chunk: int = HASH_CHUNK):
        self.address, self.num_cpus = address, num_cpus
        self.max_retries, self.hash_chunk = max_retries, hash_chunk
        self._ray = None

    def _start(self):
        if self._ray is None:
            import ray  # lazy: a heavy optional dependency (the `ray` extra), needed only for --engine ray
            if not ray.is_initialized():
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local only: no token warning
                    ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                             log_to_driver=False)
            self._hash = ray.remote(num_cpus=1, max_retries=self.max_retries)(_hash_chunk)
            self._shard = ray.remote(num_cpus=1, max_retries=self.max_retries)(_build_shard)
            self._ray = ray
        return self._ray

    def in_flight(self) -> int:
        """Tasks submitted ahead of the results: enough to keep every CPU busy, few enough to bound memory."""
        return max(2, 2 * int(self._start().cluster_resources().get("CPU", 1)))

    def _run(self, calls: Iterator[tuple]) -> Iterator[tuple[object, object]]:
        """Submit (key, remote function, args...) calls, at most in_flight at a time; yield (key, result)
        as each finishes."""
        ray = self._start()
        limit, pending = self.in_flight(), {}
        for key, fn, *args in calls:
            while len(pending) >= limit:
                yield from self._collect(ray, pending)
            pending[fn.remote(*args)] = key
        while pending:
            yield from self._collect(ray, pending)

    @staticmethod
    def _collect(ray, pending: dict) -> Iterator[tuple[object, object]]:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)

    def hash_items(self, items: Sequence[build.Item]) -> Iterator[tuple[build.Item, str]]:
        """build.Engine pass 1: hash chunks of `items` on the workers; sets each item's sha256."""
        self._start()
        calls = ((i, self._hash, [_absolute(it) for it in items[i:i + self.hash_chunk]])
                 for i in range(0, len(items), self.hash_chunk))
        for i, results in self._run(calls):
            for it, (sha, reason) in zip(items[i:i + self.hash_chunk], results, strict=True):
                it.sha256 = sha
                yield it, reason

    def build_shards(self, todo: Sequence[tuple[str, list[build.Item], str]], settings: build.Settings
                     ) -> Iterator[tuple[str, dict]]:
        """build.Engine pass 2: build.build_shard of each planned shard on the workers, as each finishes."""
        self._start()
        calls = ((path, self._shard, os.path.abspath(path), [_absolute(it) for it in chunk], settings, digest)
                 for path, chunk, digest in todo)
        yield from self._run(calls)
