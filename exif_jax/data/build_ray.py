"""`exif-jax build-data --engine ray`: build-data's parallel work as Ray tasks, on a laptop or a cluster.

The driver runs build.build_dataset unchanged (listing, dedup by sha256, the shard plan, resume from
sidecars, summary.json); only the parallel work goes to Ray: pass 1 hashes chunks of inputs
(build._hash_chunk), pass 2 runs build.build_shard, the very function the local process pool runs, so the
shards, pixel files, sidecars and summary are byte for byte those of `--engine local`
(tests/test_build_ray.py). This module knows nothing of build-data: RayEngine.run(fn, calls) runs any
function, so build.py can hand it its own (and no import cycle arises).

Ray tasks, not Ray Data: the unit of work is a shard that one writer must own from its temporary name to
its rename, and build_shard already is that unit. Tasks give exactly that, plus what the build needs from an
engine: a task whose worker process dies is re-run (max_retries; the rename-when-complete leaves nothing
partial behind), each task's sidecar comes back to the driver for the summary, and a re-run after the driver
dies skips the shards whose sidecars exist. Ray Data would map rows through its own blocks and datasinks,
which do not write this layout, and would carry every photo's bytes through the object store.

Driver memory: the Items of the listing and the plan (~300-550 bytes per input photo, measured by
benchmarks/build_data.py), plus at most `in_flight` task results; photo bytes never reach the driver.

On a cluster every worker reads the inputs and writes the output folder itself: both must be on a shared
file system mounted at the same path (or object storage once exif_jax.storage serves data/inputs.open_path
and the writers), and exif_jax must be installed on the workers (the cluster's image). Tasks run in the
driver's working directory, so relative paths mean what they mean to the local build.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

MAX_RETRIES = 3  # re-runs of a task whose worker process died (node lost, OOM kill, preemption)


def _call(cwd: str, fn: Callable, *args):
    """On a worker: fn(*args) from the driver's working directory (when this machine has it)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(*args)


class RayEngine:
    """build.Engine on Ray: joins the cluster at `address`, or starts a local Ray with `num_cpus` CPUs
    (default: all cores) when none is running in this process."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = MAX_RETRIES):
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self._ray = self._remote = None

    def _start(self):
        if self._ray is None:
            if not self.address:
                # Before ray is imported: a local Ray binds the loopback interface only (Ray's single-machine
                # mode, as on macOS), and skips the token warning.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            import ray  # lazy: a heavy optional dependency (the `ray` extra), needed only for --engine ray
            if not ray.is_initialized():
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
            self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_call)
            self._ray = ray
        return self._ray

    def in_flight(self) -> int:
        """Tasks submitted ahead of the results: enough to keep every CPU busy, few enough to bound memory."""
        return max(2, 2 * int(self._start().cluster_resources().get("CPU", 1)))

    def run(self, fn: Callable, calls: Iterable[tuple[object, tuple]]) -> Iterator[tuple[object, object]]:
        """build.Engine: fn(*args) as a Ray task (named after fn) for each (key, args), at most in_flight at a
        time; yields (key, result) as each finishes. A task's exception is raised here, stopping the build."""
        ray = self._start()
        task = self._remote.options(name=fn.__name__)  # the worker's process title: ray::<fn name>
        limit, pending, cwd = self.in_flight(), {}, os.getcwd()
        for key, args in calls:
            while len(pending) >= limit:
                yield self._next(ray, pending)
            pending[task.remote(cwd, fn, *args)] = key
        while pending:
            yield self._next(ray, pending)

    @staticmethod
    def _next(ray, pending: dict) -> tuple[object, object]:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        return pending.pop(ref), ray.get(ref)
