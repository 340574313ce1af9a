"""A build (local, gs:// or s3://) -> grain -> native-resolution crops + EXIF tokens -> global batches on a mesh.

Order (all index-based steps are lazy MapDataset views, so they cost nothing until an element is read):
  photos (the build's index, in shard order) -> seeded global shuffle, reshuffled every epoch -> repeat
  -> tag with the global position -> k random crop positions (rng from seed and global position) -> the
  crops' pixels (region decode of only the MCUs each crop covers, read as byte ranges, or one whole-photo
  decode for photos build-data could not rewrite; exif_jax.data.reader) -> tokenize -> this process's
  slice -> [worker processes] -> split into single crops -> seeded window shuffle (a photo's k crops land
  in different batches) -> per-process batches -> prefetch thread -> (GlobalBatchIterator) one global
  jax.Array per field, batch-sharded on the mesh.

At one crop per photo the batch is formed first and its photos are read together: every head, then every
band range, all in flight at once (latency of object storage hidden by concurrency, not paid per photo).
Builds of earlier versions (no index.npy) are read from their ArrayRecord shards as before.

Pixels are never resized or resampled: the camera's demosaicing and JPEG traces at native resolution
are the signal the image tower learns from.
"""
from __future__ import annotations

import gc
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from exif_jax.data import crops as crops_lib
from exif_jax.data import mixing, reader, records
from exif_jax.data.pixel_store import PixelReader
from exif_jax.sharding import BATCH_AXES, batch_sharding

# Host batch fields that the model consumes; `offset` (crop origin, for tests/debugging) is host-only.
MODEL_FIELDS = ("image", "tokens", "image_id", "text_id")


class TokenizerLike(Protocol):
    """What the pipeline needs from a tokenizer (exif_jax.tokenizer.Tokenizer satisfies it)."""

    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...


def make_source(data_dir: str) -> grain.sources.RandomAccessDataSource:
    """A grain random-access source over all shards in `data_dir`; element i is record i's bytes."""
    # build's shard list refuses unfinished or mixed builds; sorted, so record indices are stable.
    return grain.sources.ArrayRecordDataSource(reader.shard_paths(data_dir))


def text_id(text: str) -> int:
    """Stable 31-bit id of an EXIF text (same text -> same id in every process and run)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def crop_positions(height: int, width: int, k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """k uniformly placed size x size crop origins in an image; int32 [k, 2] (y, x)."""
    if height < size or width < size:
        raise ValueError(f"image {width}x{height} is smaller than the {size}x{size} crop")
    # floor(u * n) with u uniform in [0, 1) is uniform over 0..n-1 (n << 2**53); one call for all k crops
    # (Generator.integers with array bounds costs ~50 us a call, a tenth of a crop).
    return (rng.random((k, 2)) * (height - size + 1, width - size + 1)).astype(np.int32)


def random_crops(
    image: np.ndarray, k: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """k uniformly placed size x size crops of `image` [H, W, C]; returns (crops [k,s,s,C], offsets [k,2] (y, x))."""
    offsets = crop_positions(image.shape[0], image.shape[1], k, size, rng)
    crops = np.stack([image[y:y + size, x:x + size] for y, x in offsets])
    return crops, offsets


def record_crops(rec: records.Record, reader: PixelReader | None, positions: np.ndarray, size: int, *,
                 decode: str = "auto") -> np.ndarray:
    """The pixels of size x size crops at `positions` of a record's photo; uint8 [k, size, size, 3].

    decode "auto" uses the region decode when the record has it; "whole" always decodes the whole photo.
    """
    what = rec["path"]
    pos = [(int(y), int(x)) for y, x in positions]
    if rec["jpeg"] is None:  # a version 1 record: original bytes inline
        return crops_lib.crops_full(rec["image"], pos, size, what)
    if reader is None:
        raise ValueError(f"{what}: reading a version 2 record's pixels needs its data folder")
    stream = reader.bytes_of(rec["jpeg"])
    fast = rec["fast"]
    if fast is None or decode == "whole":
        return crops_lib.crops_full(stream, pos, size, what)
    starts, lengths = reader.tables(rec["jpeg"], fast["table_at"], fast["mcus_y"], fast["mcus_x"],
                                    fast["length_bytes"])
    return crops_lib.crops_fast(stream, starts, lengths, fast, rec["height"], rec["width"], pos, size, what)


class _IndexedRecords(grain.sources.RandomAccessDataSource):
    """Element i is (i, record i's bytes): the record index becomes image_id, stable across shuffles and
    epochs (a source rather than a map over one, to save a pipeline stage per element)."""

    def __init__(self, data_dir: str):
        self._records = make_source(data_dir)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        index %= len(self._records)  # views past one epoch pass the raw position down
        return index, self._records[index]


class _DecodeCropTokenize(grain.transforms.RandomMap):
    """One record -> a group of k crops with their ids and tokens (leading dim k on every field)."""

    def __init__(self, data_dir: str, crop_size: int, k: int, tokenizer: TokenizerLike, decode: str,
                 squeeze: bool = False):
        self.reader = PixelReader(data_dir)  # memory maps, opened in whichever process decodes
        self.crop_size = crop_size
        self.k = k
        self.squeeze = squeeze  # k == 1: one crop, no leading group axis
        self.tokenizer = tokenizer
        self.decode = decode

    def random_map(self, element: tuple[int, bytes], rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, raw = element
        rec = records.decode_record(raw)
        path, s = rec["path"], self.crop_size
        # The build step skips small photos, so one here is a broken dataset.
        if rec["width"] < s or rec["height"] < s:
            raise ValueError(
                f"{path} (record {index}): image {rec['width']}x{rec['height']} is smaller than "
                f"the {s}x{s} crop; rebuild the dataset with `exif-jax build-data` (it skips these)")
        offsets = crop_positions(rec["height"], rec["width"], self.k, s, rng)
        try:
            crops = record_crops(rec, self.reader, offsets, s, decode=self.decode)
        except ValueError as e:
            raise ValueError(f"{path} (record {index}): {e}") from e
        tokens = np.asarray(self.tokenizer.encode(rec["text"]), dtype=np.int32)
        if self.squeeze:
            return {"image": crops[0], "tokens": tokens, "image_id": np.int32(index),
                    "text_id": np.int32(text_id(rec["text"])), "offset": offsets[0]}
        k = self.k
        return {
            "image": crops,  # uint8: the model normalizes on device (4x less host->device traffic than f32)
            "tokens": np.tile(tokens[None], (k, 1)),
            "image_id": np.full((k,), index, np.int32),
            "text_id": np.full((k,), text_id(rec["text"]), np.int32),
            "offset": offsets,
        }


class _PhotoIndex(grain.sources.RandomAccessDataSource):
    """Element i is photo i of a build in the range-read layout (its index row is read where it is decoded)."""

    def __init__(self, n: int):
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> int:
        return index % self._n  # views past one epoch pass the raw position down


def _with_position(position: int, index: int) -> tuple[int, int]:
    return position, index


class _ReadCrops:
    """(global position, photo) pairs -> their crops with ids and tokens, every read of the group in flight
    at once. One pair gives a k-crop group (leading dim k); a batch of pairs (k == 1) gives a batch."""

    def __init__(self, build: reader.Build, crop_size: int, k: int, tokenizer: TokenizerLike, decode: str,
                 seed: int, batched: bool, log_every_s: float = 60.0):
        self.data_dir, self.crop_size, self.k = build.data_dir, crop_size, k
        self.tokenizer, self.decode, self.seed, self.batched = tokenizer, decode, seed, batched
        self._build: reader.Build | None = build  # this process's; a worker process opens its own
        self.log_every_s = float(log_every_s)
        self._logged = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_build": None, "_logged": 0.0}  # each worker opens the build itself

    def _log(self) -> None:
        """The loader's log line: what its storage reads cost so far, retries included (once a minute)."""
        now = time.monotonic()
        if now - self._logged < self.log_every_s:
            return
        self._logged = now
        st = self._build.ranges.stats
        print(f"loader (pid {os.getpid()}): {st['requests']} requests, {st['retries']} retried, "
              f"{st['bytes'] / 1e6:.1f} MB read from {self.data_dir}", file=sys.stderr, flush=True)


    def __call__(self, element: Any) -> dict[str, np.ndarray]:
        if self._build is None:
            self._build = reader.Build(self.data_dir)
        if self.batched:
            positions, indices = (np.asarray(a).tolist() for a in element)
        else:
            positions, indices = [int(element[0])], [int(element[1])]
        s, rows = self.crop_size, self._build.index
        try:
            offsets = np.stack([crop_positions(int(rows[i]["height"]), int(rows[i]["width"]), self.k, s,
                                               np.random.default_rng((self.seed, p)))
                                for p, i in zip(positions, indices)])
        except ValueError as e:  # build-data skips small photos, so this is a build for another crop size
            raise ValueError(f"{self.data_dir}: {e}; rebuild with `exif-jax build-data --min-size {s}`") from e
        try:
            got = self._build.fetch(indices, list(offsets), s, decode=self.decode)
        except ValueError as e:
            raise ValueError(f"{self.data_dir}: {e}") from e
        self._log()
        tokens = np.stack([np.asarray(self.tokenizer.encode(rec["text"]), np.int32) for rec, _ in got])
        text_ids = np.array([text_id(rec["text"]) for rec, _ in got], np.int32)
        if self.batched:  # k == 1: a batch of single crops
            return {"image": np.stack([c[0] for _, c in got]), "tokens": tokens,
                    "image_id": np.asarray(indices, np.int32), "text_id": text_ids, "offset": offsets[:, 0]}
        k, crops = self.k, got[0][1]
        return {"image": crops, "tokens": np.tile(tokens, (k, 1)), "image_id": np.full((k,), indices[0], np.int32),
                "text_id": np.full((k,), text_ids[0], np.int32), "offset": offsets[0]}


def _to_numpy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in batch.items()}


def _seeds(seed: int) -> tuple[int, int, int]:
    """Three independent 31-bit seeds (shuffle, crops, spread) derived from the run seed."""
    a, b, c = np.random.SeedSequence(seed).generate_state(3) >> 1
    return int(a), int(b), int(c)


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; parse them (to defaults) if the program did not."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(
    config: ml_collections.ConfigDict,
    tokenizer: TokenizerLike,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """This process's host batches (dicts of numpy arrays); `iter()` gives a checkpointable grain iterator.

    Fields: image uint8 [b, p, p, 3], tokens int32 [b, L], image_id int32 [b] (record index; crops of one
    image share it), text_id int32 [b] (hash of the EXIF text), offset int32 [b, 2] (crop (y, x) in the
    photo), where b = global_batch_size / process_count. process_index/count default to jax's.
    """
    d = config.data
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if d.global_batch_size % process_count:
        raise ValueError(
            f"data.global_batch_size {d.global_batch_size} is not divisible by {process_count} processes")
    local_batch = d.global_batch_size // process_count
    k = int(d.crops_per_image)
    if k < 1 or d.crop_size < 1:
        raise ValueError(f"need crops_per_image >= 1 and crop_size >= 1, got {k}, {d.crop_size}")
    num_epochs = int(d.num_epochs) or None  # 0 -> repeat forever
    if d.decode not in ("auto", "whole"):
        raise ValueError(f"data.decode must be 'auto' or 'whole', got {d.decode!r}")
    spread = int(d.spread_batches) or (4 if k > 1 else 1)
    shuffle_seed, crop_seed, spread_seed = _seeds(seed)

    indexed = reader.has_index(d.train_dir)
    if indexed:
        build = reader.Build(d.train_dir)  # reads the index once; decoding in this process uses it too
        ds = grain.MapDataset.source(_PhotoIndex(len(build)))
    else:
        ds = grain.MapDataset.source(_IndexedRecords(d.train_dir))
    if d.shuffle:
        # Before repeat: both shuffles see the raw position, so each epoch gets its own order.
        ds = mixing.shuffled(ds, shuffle_seed)
    ds = ds.repeat(num_epochs)
    if indexed:
        # Crops are drawn from the global position (before the process split): the same in any process count.
        ds = ds.map_with_index(_with_position)
        read = _ReadCrops(build, int(d.crop_size), k, tokenizer, d.decode, crop_seed, batched=k == 1,
                          log_every_s=float(d.get("log_every_s", 60.0)))
        if k == 1:
            # One crop per photo: the batch is formed first and read as one (all its requests in flight),
            # inside the worker processes, so the main process only moves whole batches.
            ds = ds[process_index::process_count].batch(local_batch, drop_remainder=True).map(read)
        else:
            ds = ds.map(read)[process_index::process_count]
    else:
        # Crops drawn before the process split: the rng depends on the global position only.
        ds = ds.random_map(_DecodeCropTokenize(d.train_dir, int(d.crop_size), k, tokenizer, d.decode, k == 1),
                           seed=crop_seed)
        ds = ds[process_index::process_count]
        if k == 1:
            ds = ds.batch(local_batch, drop_remainder=True)

    if k == 1:
        images_per_batch = 1  # elements are batches from here on
    else:
        images_per_batch = -(-local_batch // k)
    read = grain.ReadOptions(
        num_threads=int(d.read_threads),
        # At least one element per read thread, or the threads idle (each holds one photo or batch in flight).
        prefetch_buffer_size=max(int(d.prefetch_buffer) * images_per_batch, int(d.read_threads), 1))
    it = ds.to_iter_dataset(read)
    if d.worker_count > 0:
        _ensure_absl_flags_parsed()
        # Workers hand out k-crop groups (worker i takes groups i::W, read back round-robin), and batching
        # happens here, so the batches are the same for any worker count (debug with 0, train with N).
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=int(d.worker_count),
            per_worker_buffer_size=max(int(d.prefetch_buffer) * images_per_batch // int(d.worker_count), 1)))
        # Copy out of the workers' shared memory (tiny next to decoding) so each segment is freed at once.
        it = it.map(_to_numpy)
    if k == 1:
        pass
    elif spread > 1:
        # A photo's k crops would otherwise sit side by side in one batch; permuted over `spread` batches
        # they meet other photos' crops. The window is rebuilt from the saved state on restore.
        it = mixing.SpreadBatches(it, batch_size=local_batch, window_batches=spread, seed=spread_seed)
    else:
        # Groups of k crops are cut into batches; a group may straddle two batches, which is fine:
        # image_id, not batch membership, tells the loss which crops belong together.
        it = grain.experimental.RebatchIterDataset(it, batch_size=local_batch, drop_remainder=True)
    if d.prefetch_buffer > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=int(d.prefetch_buffer))
    return it


def to_global(
    batch: dict[str, np.ndarray], mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES
) -> dict[str, jax.Array]:
    """Assemble each process's host batch into global jax.Arrays, batch-sharded over `batch_axes`."""
    sharding = batch_sharding(mesh, batch_axes)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class GlobalBatchIterator:
    """Global, batch-sharded jax.Array batches from a host loader; its grain state is what checkpoints hold."""

    def __init__(self, loader: grain.IterDataset, mesh: Mesh, *,
                 batch_axes: Sequence[str] = BATCH_AXES, fields: Sequence[str] = MODEL_FIELDS):
        self.host_iterator: grain.DatasetIterator = iter(loader)
        self.mesh = mesh
        self.batch_axes = tuple(batch_axes)
        self.fields = tuple(fields)

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        batch = next(self.host_iterator)
        return to_global({k: batch[k] for k in self.fields}, self.mesh, self.batch_axes)

    def get_state(self) -> dict[str, Any]:
        """grain iterator state (JSON-serializable): where the next batch comes from."""
        return self.host_iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a state returned by get_state()."""
        self.host_iterator.set_state(state)

    def close(self) -> None:
        """Stop worker processes / prefetch threads; the iterator is unusable afterwards."""
        self.host_iterator.close()
        # grain's iterators sit in reference cycles; collected at interpreter exit instead, their __del__
        # prints tracebacks. Collect them now.
        del self.host_iterator
        gc.collect()


def make_global_iterator(
    config: ml_collections.ConfigDict, tokenizer: TokenizerLike, mesh: Mesh, *, seed: int,
    batch_axes: Sequence[str] = BATCH_AXES,
) -> GlobalBatchIterator:
    """make_loader for this jax process, wrapped to yield global sharded batches."""
    return GlobalBatchIterator(make_loader(config, tokenizer, seed=seed), mesh, batch_axes=batch_axes)


def _grain_iterator(it: GlobalBatchIterator | grain.DatasetIterator) -> grain.DatasetIterator:
    return it.host_iterator if isinstance(it, GlobalBatchIterator) else it


def checkpoint_args(it: GlobalBatchIterator | grain.DatasetIterator) -> Any:
    """orbax save args for the data iterator, e.g. ocp.args.Composite(..., data=checkpoint_args(it))."""
    return grain.checkpoint.CheckpointSave(item=_grain_iterator(it))


def restore_args(it: GlobalBatchIterator | grain.DatasetIterator) -> Any:
    """orbax restore args: restoring sets `it`'s state in place (one JSON file per process)."""
    return grain.checkpoint.CheckpointRestore(item=_grain_iterator(it))


def set_position(it: GlobalBatchIterator | grain.DatasetIterator, config: ml_collections.ConfigDict,
                 batches_done: int) -> None:
    """Continue after `batches_done` batches, in any process count (elastic resume).

    At one crop per photo, global batch j is positions j*G .. (j+1)*G - 1 of the global stream whatever the
    process count (each process takes every P-th position, then batches its share), so the state a run needs
    is only how many batches were taken: each process's iterator is set to its j-th batch (with grain worker
    processes: worker w made batches w, w + W, ...). With k > 1 crops per photo a batch mixes the crops of a
    process's own photos (and the spread window permutes them), so batches depend on the process count: that
    is refused here, with the reason.
    """
    k = int(config.data.crops_per_image)
    if k != 1:
        raise ValueError(
            f"resuming on another process count is exact only at data.crops_per_image=1 (this run has {k}): each "
            f"batch of a k>1 run holds the crops of its own process's photos, in a window permuted per process; "
            f"resume on the process count the checkpoint was written with")
    grain_it = _grain_iterator(it)
    state = grain_it.get_state()
    workers = int(config.data.worker_count)
    if workers <= 0:
        if set(state) != {"next_index"}:
            raise RuntimeError(f"unexpected grain iterator state {sorted(state)}; cannot set its position")
        grain_it.set_state({"next_index": int(batches_done)})
        return
    expected = {"next_index_in_cycle", "next_index_in_datasets", "iterators_in_use_indices",
                "iterators_in_use_states", "exhausted", "future_states"}
    if set(state) != expected or len(state["iterators_in_use_states"]) != workers:
        raise RuntimeError(f"unexpected grain multiprocess state {sorted(state)}; cannot set its position")
    n = int(batches_done)
    state = dict(state, next_index_in_cycle=n % workers,
                 iterators_in_use_states=[{"next_index": max(0, -(-(n - w) // workers))} for w in range(workers)])
    grain_it.set_state(state)
