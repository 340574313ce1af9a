"""grain input pipeline: real ArrayRecord shards of the bundled photos -> crops -> sharded global batches."""
from __future__ import annotations

import glob
import hashlib
import io
import os
from pathlib import Path

import jax
import ml_collections
import msgpack
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from exif_jax.data import build, pipeline, records
from exif_jax.data import crops as crops_lib

REPO = Path(__file__).parents[1]
PHOTOS = sorted(glob.glob(str(REPO / "exif_jax" / "assets" / "photos" / "*.jpg")))
NUM_PHOTOS = len(PHOTOS)


class ByteTokenizer:
    """Stand-in with exif_jax.tokenizer.Tokenizer's interface: ids = utf-8 bytes + 2, eos 1, pad 0."""

    pad_id = 0
    vocab_size = 258

    def __init__(self, max_len: int = 16):
        self.max_len = max_len

    def encode(self, text: str) -> np.ndarray:
        ids = [b + 2 for b in text.encode("utf-8")][: self.max_len - 1] + [1]
        row = np.zeros((self.max_len,), np.int32)
        row[: len(ids)] = ids
        return row

    def encode_batch(self, texts):
        return np.stack([self.encode(t) for t in texts]), 0


def encode_v1(image: bytes, **fields) -> bytes:
    """A version 1 record (original bytes inline), as older builds wrote it; the loader still reads them."""
    payload = {"image": image, **{k: fields[k] for k in records._V1_FIELDS[1:]}, "v": 1}
    return msgpack.packb(payload, use_bin_type=True)


def _record(data: bytes, path: str, text: str) -> bytes:
    """A version 1 record (original bytes inline), as older builds wrote: the loader still reads them."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    return encode_v1(data, text=text, tags={}, width=w, height=h, camera="test|test", path=path,
                             sha256=hashlib.sha256(data).hexdigest())


def write_shards(out_dir: str, items: list[tuple[bytes, str, str]], num_shards: int) -> None:
    """(bytes, path, text) -> records-0000i-of-0000n.array_record, as build-data names them."""
    os.makedirs(out_dir, exist_ok=True)
    for s in range(num_shards):
        w = ArrayRecordWriter(os.path.join(out_dir, f"records-{s:05d}-of-{num_shards:05d}.array_record"),
                              "group_size:1")
        for data, path, text in items[s::num_shards]:
            w.write(_record(data, path, text))
        w.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """The bundled photos through `exif-jax build-data`'s library: real EXIF texts, 3 shards."""
    assert NUM_PHOTOS >= 12, "bundled photos missing"
    out = str(tmp_path_factory.mktemp("records"))
    summary = build.build_dataset(build.items_from_paths(PHOTOS), out, build.settings_from_config(None),
                                  num_shards=3, workers=1, progress=False)
    assert summary["kept"] == NUM_PHOTOS, summary["skipped"]
    return out


def source_order(data_dir: str) -> list[tuple[str, str]]:
    """Record index -> (path, text), read back from the shards with array_record's own reader."""
    out = []
    for shard in sorted(glob.glob(os.path.join(data_dir, "records-*.array_record"))):
        reader = ArrayRecordReader(shard)
        out += [(r["path"], r["text"]) for r in map(records.decode_record, reader.read_all())]
        reader.close()
    return out


def make_config(data_dir: str, **data) -> ml_collections.ConfigDict:
    d = dict(train_dir=data_dir, crop_size=32, crops_per_image=2, global_batch_size=12, worker_count=0,
             prefetch_buffer=2, num_epochs=0, shuffle=True, read_threads=2, decode="auto", spread_batches=0)
    d.update(data)
    return ml_collections.ConfigDict(dict(seed=0, data=d, tokenizer=dict(max_len=16)))


def take(loader, n: int, state=None) -> list[dict[str, np.ndarray]]:
    it = iter(loader)
    if state is not None:
        it.set_state(state)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_random_crops_are_exact_regions():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)
    crops, offsets = pipeline.random_crops(image, 64, 16, np.random.default_rng(1))
    assert crops.shape == (64, 16, 16, 3) and crops.dtype == np.uint8 and offsets.shape == (64, 2)
    assert offsets[:, 0].max() <= 40 - 16 and offsets[:, 1].max() <= 57 - 16 and offsets.min() >= 0
    assert len({tuple(o) for o in offsets}) > 32  # spread out, not one fixed place
    for c, (y, x) in zip(crops, offsets):
        np.testing.assert_array_equal(c, image[y:y + 16, x:x + 16])
    with pytest.raises(ValueError, match="smaller than"):
        pipeline.random_crops(image, 1, 41, rng)


def test_batches_are_native_pixels_with_ids_and_tokens(data_dir):
    cfg = make_config(data_dir)
    paths = source_order(data_dir)
    tok = ByteTokenizer()
    decoded = {}
    for b in take(pipeline.make_loader(cfg, tok, seed=3, process_index=0, process_count=1), 3):
        assert b["image"].shape == (12, 32, 32, 3) and b["image"].dtype == np.uint8
        assert b["tokens"].shape == (12, 16) and b["tokens"].dtype == np.int32
        assert b["image_id"].dtype == np.int32 and b["text_id"].dtype == np.int32
        for crop, (y, x), iid, tid, toks in zip(b["image"], b["offset"], b["image_id"], b["text_id"], b["tokens"]):
            path, text = paths[iid]
            if path not in decoded:  # decoded independently of the pipeline, straight from the file
                decoded[path] = np.asarray(Image.open(path).convert("RGB"))
            np.testing.assert_array_equal(crop, decoded[path][y:y + 32, x:x + 32], err_msg=path)
            np.testing.assert_array_equal(toks, tok.encode(text))
            assert tid == pipeline.text_id(text)
    assert len(decoded) >= 9
    texts = {t for _, t in paths}
    ids = {pipeline.text_id(t) for t in texts}
    assert len(ids) == len(texts) and all(0 <= i < 2**31 for i in ids)  # the hash separates these texts
    assert pipeline.text_id("Make: Canon") == pipeline.text_id("Make: Canon") != pipeline.text_id("Make: Canon ")


def test_seed_determines_batches(data_dir):
    cfg = make_config(data_dir)
    def run(seed):
        return take(pipeline.make_loader(cfg, ByteTokenizer(), seed=seed, process_index=0,
                                                     process_count=1), 4)
    a, b, c = run(7), run(7), run(8)
    assert_same(a, b)
    assert any(not np.array_equal(x["image_id"], y["image_id"]) for x, y in zip(a, c))
    assert any(not np.array_equal(x["offset"], y["offset"]) for x, y in zip(a, c))


def test_epochs_reshuffle_and_recrop(data_dir):
    if 2 * NUM_PHOTOS % 12:
        pytest.skip(f"{NUM_PHOTOS} photos x 2 crops do not fill whole batches of 12")
    cfg = make_config(data_dir, spread_batches=1)  # spreading blurs epoch edges by up to one window
    per_epoch = 2 * NUM_PHOTOS // 12
    bs = take(pipeline.make_loader(cfg, ByteTokenizer(), seed=0, process_index=0, process_count=1), 2 * per_epoch)
    e0 = np.concatenate([b["image_id"] for b in bs[:per_epoch]])
    e1 = np.concatenate([b["image_id"] for b in bs[per_epoch:]])
    assert sorted(e0) == sorted(e1) == sorted(list(range(NUM_PHOTOS)) * 2)  # every image once (k crops) per epoch
    assert not np.array_equal(e0, e1)  # a new order each epoch


@pytest.mark.parametrize("k,spread", [(1, 0), (2, 0), (5, 0), (3, 1)])
def test_restore_state_gives_identical_next_batches(data_dir, k, spread):
    """k=1: batched by index; 2: spread over 4-batch windows; 5: groups straddle windows (48 crops);
    3 unspread: groups straddle batches."""
    cfg = make_config(data_dir, crops_per_image=k, spread_batches=spread)
    loader = pipeline.make_loader(cfg, ByteTokenizer(), seed=1, process_index=0, process_count=1)
    it = iter(loader)
    try:
        for _ in range(2):
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(3)]
    finally:
        it.close()
    fresh = pipeline.make_loader(cfg, ByteTokenizer(), seed=1, process_index=0, process_count=1)
    assert_same(take(fresh, 3, state=state), expected)


def test_orbax_checkpoint_round_trip(data_dir, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    cfg = make_config(data_dir)
    def mk():
        return pipeline.make_loader(cfg, ByteTokenizer(), seed=2, process_index=0, process_count=1)
    it = iter(mk())
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=pipeline.checkpoint_args(it)))
        mngr.wait_until_finished()
    expected = [next(it) for _ in range(2)]
    it.close()

    restored = iter(mk())
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=pipeline.restore_args(restored)))
    try:
        assert_same([next(restored) for _ in range(2)], expected)
    finally:
        restored.close()


def test_processes_get_disjoint_shards_covering_one_epoch(data_dir):
    if NUM_PHOTOS % 2:
        pytest.skip("needs an even number of bundled photos")
    # One epoch: each of 2 processes gets NUM_PHOTOS/2 images x 2 crops; batches of 6 per process.
    local_crops = NUM_PHOTOS
    cfg = make_config(data_dir, num_epochs=1, global_batch_size=2 * 6)
    if local_crops % 6:
        pytest.skip("photo count does not fill whole batches")
    seen = []
    for p in range(2):
        bs = list(pipeline.make_loader(cfg, ByteTokenizer(), seed=5, process_index=p, process_count=2))
        assert len(bs) == local_crops // 6 and all(b["image"].shape[0] == 6 for b in bs)
        seen.append(np.concatenate([b["image_id"] for b in bs]))
    a, b = (set(s.tolist()) for s in seen)
    assert not a & b
    assert a | b == set(range(NUM_PHOTOS))
    for s in seen:  # every image's k crops stay with one process
        assert all(c == 2 for c in np.unique(s, return_counts=True)[1])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1)])
@pytest.mark.slow
def test_global_batches_sharded_on_mesh(data_dir, mesh_shape):
    if jax.device_count() < 8:
        pytest.skip(f"needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), have "
                    f"{jax.device_count()}")
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), devices=jax.devices()[:8])
    cfg = make_config(data_dir, global_batch_size=16)
    host = take(pipeline.make_loader(cfg, ByteTokenizer(), seed=4), 2)  # jax's own process index/count
    it = pipeline.make_global_iterator(cfg, ByteTokenizer(), mesh, seed=4)
    try:
        for h in host:
            g = next(it)
            assert set(g) == set(pipeline.MODEL_FIELDS)
            want = {"image": ((16, 32, 32, 3), np.uint8), "tokens": ((16, 16), np.int32),
                    "image_id": ((16,), np.int32), "text_id": ((16,), np.int32)}
            for k, (shape, dtype) in want.items():
                arr = g[k]
                assert arr.shape == shape and arr.dtype == dtype, k
                assert arr.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), arr.ndim), k
                assert {s.data.shape[0] for s in arr.addressable_shards} == {2}, k  # 16 rows over 8 devices
                np.testing.assert_array_equal(np.asarray(arr), h[k], err_msg=k)
        state = it.get_state()
        nxt = next(it)
    finally:
        it.close()
    it2 = pipeline.make_global_iterator(cfg, ByteTokenizer(), mesh, seed=4)
    it2.set_state(state)
    try:
        np.testing.assert_array_equal(np.asarray(next(it2)["image"]), np.asarray(nxt["image"]))
    finally:
        it2.close()


def _tiny_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_image_smaller_than_crop_names_its_path(tmp_path):
    d = str(tmp_path / "small")
    write_shards(d, [(Path(PHOTOS[0]).read_bytes(), PHOTOS[0], "a"), (_tiny_jpeg(24, 40), "/photos/tiny.jpg", "b")], 1)
    cfg = make_config(d, global_batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"/photos/tiny\.jpg.*24x40 is smaller than the 32x32 crop"):
        take(pipeline.make_loader(cfg, ByteTokenizer(), seed=0, process_index=0, process_count=1), 2)

    # A header that lies about the size is caught after decoding, still naming the file.
    data = _tiny_jpeg(24, 40)
    d2 = str(tmp_path / "liar")
    os.makedirs(d2)
    w = ArrayRecordWriter(os.path.join(d2, "records-00000-of-00001.array_record"), "group_size:1")
    w.write(encode_v1(data, text="c", tags={}, width=640, height=480, camera="t|t", path="/photos/liar.jpg",
                              sha256=hashlib.sha256(data).hexdigest()))
    w.close()
    with pytest.raises(ValueError, match=r"/photos/liar\.jpg.*smaller than"):
        take(pipeline.make_loader(make_config(d2, global_batch_size=2), ByteTokenizer(), seed=0,
                                  process_index=0, process_count=1), 1)


def test_bad_inputs_give_clear_errors(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="no .*array_record"):
        pipeline.make_source(str(tmp_path))
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        pipeline.make_loader(make_config(data_dir, global_batch_size=7), ByteTokenizer(), seed=0,
                             process_index=0, process_count=2)
    with pytest.raises(ValueError, match=r"/photos/broken\.jpg: cannot decode"):
        crops_lib.decode_rgb(b"\xff\xd8 not really a jpeg", "/photos/broken.jpg")


@pytest.mark.subprocess
def test_worker_processes_real_tokenizer_and_restore(data_dir, tmp_path):
    tokenizer = pytest.importorskip("exif_jax.tokenizer")
    paths = source_order(data_dir)
    model = tokenizer.train_tokenizer([t for _, t in paths], str(tmp_path / "sp"), vocab_size=400)
    tok = tokenizer.Tokenizer(model, max_len=16)
    # 2 spawned workers (the tokenizer is pickled into them); each start costs seconds, so one test does it all.
    cfg = make_config(data_dir, worker_count=2)
    it = iter(pipeline.make_loader(cfg, tok, seed=1, process_index=0, process_count=1))
    try:
        first = [next(it) for _ in range(2)]
        state = it.get_state()
        expected = [next(it) for _ in range(3)]
    finally:
        it.close()
    for b in first + expected:
        assert b["tokens"].shape == (12, 16) and type(b["image"]) is np.ndarray
        for iid, toks in zip(b["image_id"], b["tokens"]):
            np.testing.assert_array_equal(toks, tok.encode(paths[iid][1]))
        assert (b["tokens"] != tok.pad_id).sum(axis=1).min() >= 2
    assert_same(take(pipeline.make_loader(cfg, tok, seed=1, process_index=0, process_count=1), 3, state=state),
                expected)
    # Batching happens after the workers: the stream does not depend on their number.
    serial = make_config(data_dir, worker_count=0)
    assert_same(take(pipeline.make_loader(serial, tok, seed=1, process_index=0, process_count=1), 5),
                first + expected)


def crops_match_photos(batches: list[dict], photo_of: dict[int, str], size: int) -> int:
    """Every crop equals Pillow's full decode of its source photo cut at the crop's `offset`."""
    full: dict[str, np.ndarray] = {}
    n = 0
    for b in batches:
        for crop, (y, x), iid in zip(b["image"], b["offset"], b["image_id"]):
            path = photo_of[int(iid)]
            if path not in full:
                with Image.open(path) as im:
                    full[path] = np.asarray(im.convert("RGB"))
            np.testing.assert_array_equal(crop, full[path][y:y + size, x:x + size], err_msg=f"{path} at {y},{x}")
            n += 1
    return n


def test_pipeline_crops_are_the_photos_pixels_at_offset(data_dir):
    """Region decodes through the real loader: each crop, found again through image_id -> record path and
    offset, equals the original file's full decode there; the whole-photo path yields the same batches."""
    photo_of = {i: p for i, (p, _) in enumerate(source_order(data_dir))}
    for size in (32, 96):
        cfg = make_config(data_dir, crop_size=size, crops_per_image=3)
        fast = take(pipeline.make_loader(cfg, ByteTokenizer(), seed=3, process_index=0, process_count=1), 6)
        assert crops_match_photos(fast, photo_of, size) == 6 * 12
        cfg.data.decode = "whole"
        assert_same(take(pipeline.make_loader(cfg, ByteTokenizer(), seed=3, process_index=0, process_count=1), 6),
                    fast)


def test_crops_of_a_photo_spread_across_batches(data_dir):
    """k=4, batches of 12: the window shuffle (48 crops) mixes what would be 3 whole photos per batch."""
    spread_cfg, plain_cfg = make_config(data_dir, crops_per_image=4), make_config(data_dir, crops_per_image=4,
                                                                                   spread_batches=1)
    spread = take(pipeline.make_loader(spread_cfg, ByteTokenizer(), seed=6, process_index=0, process_count=1), 8)
    plain = take(pipeline.make_loader(plain_cfg, ByteTokenizer(), seed=6, process_index=0, process_count=1), 8)
    def key(bs):
        return sorted(zip(np.concatenate([b["image_id"] for b in bs]).tolist(),
                                    map(tuple, np.concatenate([b["offset"] for b in bs]).tolist())))
    for w in range(2):  # each window of 48 crops holds exactly the crops the unspread stream has there
        assert key(spread[4 * w:4 * w + 4]) == key(plain[4 * w:4 * w + 4])
    def per_batch(bs):
        return [len(np.unique(b["image_id"])) for b in bs]
    assert per_batch(plain) == [3] * 8  # 3 photos x 4 crops: neighbours in one batch
    assert np.mean(per_batch(spread)) > 6
    # and the spread stream resumes exactly from any point: mid-window, at a window's end, before the start
    for at in (0, 3, 4, 6):
        it = iter(pipeline.make_loader(spread_cfg, ByteTokenizer(), seed=6, process_index=0, process_count=1))
        try:
            for _ in range(at):
                next(it)
            state = it.get_state()
        finally:
            it.close()
        assert_same(take(pipeline.make_loader(spread_cfg, ByteTokenizer(), seed=6, process_index=0,
                                              process_count=1), 8 - at, state=state), spread[at:8])


FULLRES = sorted((REPO.parent / "shared" / "data" / "fullres").glob("*.jpg"))


@pytest.mark.skipif(not FULLRES, reason="camera originals not found at ../shared/data/fullres")
@pytest.mark.slow
def test_fullres_pipeline_crops_exact(tmp_path):
    """The real loader on whole 8-16 MP camera originals (128-px crops, k=1 and k=4): pixel-exact via offset."""
    out = str(tmp_path / "fullres")
    s = build.build_dataset(build.items_from_paths([str(p) for p in FULLRES]), out, build.settings_from_config(None),
                            num_shards=2, workers=2, progress=False)
    assert s["kept"] == len(FULLRES) and s["fast_path"]["records"] == len(FULLRES), s["fast_path"]
    photo_of = {i: p for i, (p, _) in enumerate(source_order(out))}
    for k in (1, 4):
        cfg = make_config(out, crop_size=128, crops_per_image=k, global_batch_size=8)
        bs = take(pipeline.make_loader(cfg, ByteTokenizer(), seed=k, process_index=0, process_count=1), 4)
        assert crops_match_photos(bs, photo_of, 128) == 32
