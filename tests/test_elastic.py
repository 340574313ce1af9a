"""Elastic resume of the input: at one crop per photo, a loader set to batch j in any process count yields the
examples an uninterrupted run's batch j holds (image_id and offset), with or without grain worker processes."""
from __future__ import annotations

import pytest
from test_pipeline import ByteTokenizer, make_config

from exif_jax.data import pipeline

pytestmark = pytest.mark.slow  # loaders in several process layouts (~30 s)

G = 8  # global batch


def _take(data_dir: str, p: int, count: int, start: int, n: int, workers: int = 0, k: int = 1) -> list[dict]:
    cfg = make_config(data_dir, crop_size=32, crops_per_image=k, global_batch_size=G, worker_count=workers)
    it = iter(pipeline.make_loader(cfg, ByteTokenizer(), seed=5, process_index=p, process_count=count))
    try:
        if start:
            pipeline.set_position(it, cfg, start)
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def _global(parts: list[list[dict]], j: int) -> list[tuple[int, int, int]]:
    """Examples of global batch j assembled from each process's local batch j (order within it aside)."""
    rows = []
    for local in parts:
        b = local[j]
        rows += [(int(i), int(y), int(x)) for i, (y, x) in zip(b["image_id"], b["offset"])]
    return sorted(rows)


@pytest.fixture(scope="module")
def data_dir(bundled_records) -> str:
    return bundled_records


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("before,after", [(1, 2), (2, 1), (1, 4)])
def test_resume_on_another_process_count_gives_the_same_batches(data_dir, before, after, workers):
    start, n = 5, 3
    ref = [_take(data_dir, p, before, 0, start + n) for p in range(before)]
    got = [_take(data_dir, p, after, start, n, workers) for p in range(after)]
    for j in range(n):
        assert _global(got, j) == _global(ref, start + j), f"batch {start + j}"


def test_k_above_one_is_refused_with_the_reason(data_dir):
    with pytest.raises(ValueError, match="exact only at data.crops_per_image=1"):
        _take(data_dir, 0, 1, 3, 1, k=2)
