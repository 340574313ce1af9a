"""Epoch permutations and crop spreading: the orders they promise, and exact restore from every state."""
from __future__ import annotations

import grain
import numpy as np
import pytest

from exif_jax.data import mixing


def groups(sizes: list[int]) -> grain.IterDataset:
    """Groups of crops as the loader makes them: crop ids 0.. in order, `image_id` = group number."""
    out, n = [], 0
    for g, size in enumerate(sizes):
        out.append({"image_id": np.full(size, g, np.int32), "crop": np.arange(n, n + size, dtype=np.int64)})
        n += size
    return grain.MapDataset.source(out).to_iter_dataset()


def drain(it, limit: int = 10_000) -> list[dict]:
    out = []
    for b in it:
        out.append(b)
        if len(out) >= limit:
            break
    return out


@pytest.mark.parametrize("sizes,batch,window", [
    ([4] * 30, 6, 4),                 # groups straddle batches and windows
    ([5, 1, 7, 3, 2, 9, 4] * 5, 4, 3),  # uneven groups
    ([40, 3, 2, 50], 4, 2),           # a group larger than a whole window
])
def test_spread_keeps_every_crop_once_and_mixes_groups(sizes, batch, window):
    total = sum(sizes)
    got = drain(iter(mixing.SpreadBatches(groups(sizes), batch_size=batch, window_batches=window, seed=3)))
    assert all(len(b["crop"]) == batch for b in got)
    crops = np.concatenate([b["crop"] for b in got])
    assert len(got) == total // batch and len(set(crops.tolist())) == len(crops)
    w = batch * window
    for i in range(0, len(crops) - w + 1, w):  # each window holds exactly the next w crops of the stream
        assert sorted(crops[i:i + w]) == list(range(i, i + w))
    assert not np.array_equal(crops, np.sort(crops))  # and they are not in stream order


def test_spread_restores_exactly_from_every_state():
    ds = mixing.SpreadBatches(groups([5, 1, 7, 3, 2, 9, 4, 40, 3] * 4), batch_size=4, window_batches=3, seed=7)
    it = iter(ds)
    states, batches = [], []
    while True:
        states.append(it.get_state())
        try:
            batches.append(next(it))
        except StopIteration:
            break
    for i, state in enumerate(states):
        fresh = iter(ds)
        fresh.set_state(state)
        rest = drain(fresh)
        assert len(rest) == len(batches) - i, i
        for a, b in zip(rest, batches[i:]):
            np.testing.assert_array_equal(a["crop"], b["crop"], err_msg=f"restored at batch {i}")


def test_epoch_permutation_orders_each_epoch_anew():
    ds = mixing.shuffled(grain.MapDataset.range(50), seed=1).repeat(3)
    epochs = [[ds[e * 50 + i] for i in range(50)] for e in range(3)]
    assert all(sorted(e) == list(range(50)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert [ds[i] for i in range(50)] == epochs[0]  # stateless: the same index, the same element
    big = mixing.shuffled(grain.MapDataset.range(mixing.EpochPermutation.LIMIT + 1), seed=1)
    assert not isinstance(big, mixing.EpochPermutation)  # grain's own shuffle above the limit
