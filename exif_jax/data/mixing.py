"""Orders that grain's own operations give too slowly at this pipeline's sizes: the epoch shuffle of a small
dataset, and mixing a photo's k crops into different batches. Both are exact to checkpoint and restore.

grain's index shuffle (a Feistel permutation over at least 2**16 slots, cycle-walked down to the range it
serves) costs ~6 ms per element for 20 records, ~170 us for a 256-crop window and ~75 us at 1,000, against
~7 us at a million; its window shuffle then splits groups into single crops in Python. At camera
resolution a crop costs ~0.5 ms to make, so both overheads showed up as a fifth to a half of the loader.
"""
from __future__ import annotations

import copy
from typing import Any

import grain
import numpy as np


class EpochPermutation(grain.MapDataset):
    """MapDataset.shuffle for up to LIMIT records, from cached numpy permutations: element i is the parent's
    element perm(epoch)[i % n] of epoch i // n (the same raw-position contract as grain's shuffle, so a
    repeat after it gives each epoch its own order)."""

    LIMIT = 1 << 20  # a permutation per epoch: 4 MB at the limit; above it grain's shuffle costs ~7 us

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return "EpochPermutation"

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent)).astype(np.int32)
            self._cache = {epoch: perm, **{e: p for e, p in self._cache.items() if e == epoch - 1}}
        return perm

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(index, len(self._parent))
        return self._parent[epoch * len(self._parent) + int(self._perm(epoch)[i])]


def shuffled(ds: grain.MapDataset, seed: int) -> grain.MapDataset:
    """A seeded order of `ds` that changes every epoch (put it before repeat)."""
    return EpochPermutation(ds, seed) if len(ds) <= EpochPermutation.LIMIT else ds.shuffle(seed=seed)


class SpreadBatches(grain.IterDataset):
    """Groups of crops (dicts of arrays with a leading crop axis) -> batches whose crops are permuted over
    windows of `window_batches` batches, so the k crops of one photo land in different batches.

    Groups are concatenated into a window of exactly window_batches * batch_size crops (a group may straddle
    two windows), permuted with a seed of (seed, window number), and cut into batches. Vectorized: no per-crop
    Python work, which matters when one process forms thousands of crops a second.
    """

    def __init__(self, parent: grain.IterDataset, *, batch_size: int, window_batches: int, seed: int):
        super().__init__(parent)
        self.batch_size, self.window_batches, self.seed = batch_size, window_batches, seed

    def __str__(self) -> str:
        return f"SpreadBatches(batch_size={self.batch_size}, window_batches={self.window_batches})"

    def __iter__(self) -> grain.DatasetIterator:
        return _SpreadIterator(self._parent.__iter__(), self.batch_size, self.window_batches, self.seed)


class _SpreadIterator(grain.DatasetIterator):
    """State: where the current window starts (the parent's state before the group it starts in, and how
    many of that group's crops belonged to the window before), its number, and the batches already given."""

    def __init__(self, parent: grain.DatasetIterator, batch_size: int, window_batches: int, seed: int):
        super().__init__(parent)
        self._b, self._nb, self._seed = batch_size, window_batches, seed
        self._window: dict[str, np.ndarray] | None = None
        self._carry: tuple[dict[str, np.ndarray], int] | None = None  # a group's crops past the last window
        self._carry_state: dict[str, Any] | None = None  # parent state before that group
        self._start = {"parent": copy.deepcopy(self._parent.get_state()), "skip": 0}
        self._window_index = 0
        self._given = 0

    def _fill(self) -> None:
        """Read groups into the next window; raises StopIteration when not one batch is left."""
        if self._carry is not None:
            self._start = {"parent": self._carry_state, "skip": self._carry[1]}
        else:
            self._start = {"parent": copy.deepcopy(self._parent.get_state()), "skip": 0}
        need = self._b * self._nb
        parts, n = [], 0
        while n < need:
            if self._carry is not None:
                (group, skip), state = self._carry, self._carry_state
            else:
                state = copy.deepcopy(self._parent.get_state())
                try:
                    group, skip = next(self._parent), 0
                except StopIteration:
                    break
            size = len(group["image_id"])
            take = min(size - skip, need - n)
            parts.append({f: v[skip:skip + take] for f, v in group.items()})
            n += take
            # A group that straddles two windows opens the next one with its remaining crops.
            self._carry, self._carry_state = ((group, skip + take), state) if skip + take < size else (None, None)
        n -= n % self._b  # at the end of a finite stream, whole batches only
        if n == 0:
            raise StopIteration
        # Crop j of the window (stream order) goes to slot slot[j]: each crop is copied once, straight into
        # its place, and batches are slices of the window.
        slot = np.random.default_rng([self._seed, self._window_index]).permutation(n)
        self._window = {f: np.empty((n, *v.shape[1:]), v.dtype) for f, v in parts[0].items()}
        at = 0
        for p in parts:
            m = min(len(p["image_id"]), n - at)
            for f, v in p.items():
                self._window[f][slot[at:at + m]] = v[:m]
            at += m
        self._given = 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self._window is None or self._given * self._b >= len(self._window["image_id"]):
            if self._window is not None:
                self._window_index += 1
            self._fill()
        lo = self._given * self._b
        self._given += 1
        return {f: v[lo:lo + self._b] for f, v in self._window.items()}

    def get_state(self) -> dict[str, Any]:
        return {"start": copy.deepcopy(self._start), "window_index": self._window_index, "given": self._given,
                "filled": self._window is not None}

    def set_state(self, state: dict[str, Any]) -> None:
        self._window, self._carry = None, None
        self._window_index = state["window_index"]
        if not state["filled"]:
            self._parent.set_state(state["start"]["parent"])
            self._start, self._given = state["start"], 0
            return
        # Rebuild the window exactly as it was, then skip the batches already given.
        self._parent.set_state(state["start"]["parent"])
        skip = state["start"]["skip"]
        if skip:
            self._carry_state = copy.deepcopy(state["start"]["parent"])
            self._carry = (next(self._parent), skip)
        self._fill()
        self._given = state["given"]
