"""Builds on object storage: build-data writes to s3:// and gs:// emulators on 127.0.0.1, and the loader reads
them by byte ranges, exactly, within the request budget, through faults, with bounded open files."""
from __future__ import annotations

import concurrent.futures as cf
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import object_store  # tests/ is on sys.path (conftest's folder)
import pytest
from PIL import Image
from test_pipeline import ByteTokenizer, make_config

from exif_jax import cli, storage
from exif_jax.data import jpeg_restart, layout, pipeline, reader

pytestmark = pytest.mark.subprocess  # object-store emulators and the proxy run as servers

REPO = Path(__file__).parents[1]
PHOTOS = REPO / "exif_jax" / "assets" / "photos"
FULLRES = REPO.parent / "shared" / "data" / "fullres"


def _build(out: str) -> None:
    rc = cli.main(["build-data", "--images", str(PHOTOS), "--out", out, "--workers", "1", "--no-progress",
                   "--shards", "3"])
    assert rc == 0


@pytest.fixture(scope="module")
def local_build(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("local_build"))
    _build(out)
    return out


@pytest.fixture(params=["s3", "gs"])
def remote(request, monkeypatch):
    """(server, env-applied URI prefix of a fresh bucket) for each store."""
    server = request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")
    bucket = f"bkt-{request.node.name.split('[')[0].replace('_', '-')[:40]}".lower()
    server.make_bucket(bucket)
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    return server, f"{request.param}://{bucket}"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _batches(train_dir: str, k: int, n: int, **data) -> list[dict[str, np.ndarray]]:
    config = make_config(train_dir, crop_size=128, crops_per_image=k, global_batch_size=6, **data)
    it = iter(pipeline.make_loader(config, ByteTokenizer(), seed=3, process_index=0, process_count=1))
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_remote_build_equals_local_and_reads_exactly(local_build, remote):
    server, root = remote
    _build(f"{root}/rec")
    # the same files, byte for byte
    names = storage.listdir(f"{root}/rec")
    assert names == sorted(os.listdir(local_build))
    for name in names:
        if name != "summary.json":
            assert storage.read_bytes(f"{root}/rec/{name}") == Path(local_build, name).read_bytes(), name
    # records and batches read from the bucket are the local build's
    assert [r["sha256"] for r in reader.read_records(f"{root}/rec")] == \
        [r["sha256"] for r in reader.read_records(local_build)]
    for k in (1, 3):
        got, want = _batches(f"{root}/rec", k, 3), _batches(local_build, k, 3)
        for g, w in zip(got, want):
            for field in ("image", "tokens", "image_id", "offset"):
                np.testing.assert_array_equal(g[field], w[field])
    # and they are the photos' own pixels at their offsets (Pillow's full decode)
    paths = {r["sha256"]: r["path"] for r in reader.read_records(local_build)}
    build = reader.Build(f"{root}/rec")
    for b in got:
        recs = build.records(b["image_id"].reshape(-1).tolist())
        for img, off, rec in zip(b["image"].reshape(-1, 128, 128, 3), b["offset"].reshape(-1, 2), recs):
            y, x = off
            np.testing.assert_array_equal(img, _pixels(Path(paths[rec["sha256"]]))[y:y + 128, x:x + 128])


def test_missing_remote_build_names_the_uri(remote):
    _, root = remote
    with pytest.raises(FileNotFoundError, match=f"{root}/nothing-here"):
        reader.shard_paths(f"{root}/nothing-here")
    with pytest.raises(FileNotFoundError, match=f"{root}/no-photos"):
        cli.main(["build-data", "--images", f"{root}/no-photos", "--out", f"{root}/x", "--no-progress"])


def test_deleted_object_is_named(remote, monkeypatch):
    server, root = remote
    _build(f"{root}/del")
    storage.remove(f"{root}/del/records-00001-of-00003.pixels")
    build = reader.Build(f"{root}/del")
    victim = int(np.flatnonzero(build.index["shard"] == 1)[0])
    with pytest.raises(FileNotFoundError, match="records-00001-of-00003.pixels"):
        build.records([victim])


def _covered_bytes(path: Path, y: int, x: int, s: int) -> int:
    """Bytes of the MCUs a crop covers in the restart-per-MCU stream (without the chroma context)."""
    rw = jpeg_restart.rewrite(path.read_bytes())
    lengths = np.diff(rw.offsets.astype(np.int64)).reshape(rw.mcus_y, rw.mcus_x)
    return int(lengths[y // rw.mcu_h:-(-(y + s) // rw.mcu_h), x // rw.mcu_w:-(-(x + s) // rw.mcu_w)].sum())


@pytest.mark.skipif(not FULLRES.is_dir(), reason="needs ../shared/data/fullres (camera originals)")
def test_camera_original_crop_costs_at_most_three_requests(s3_server, tmp_path, monkeypatch):
    """At k=1 on 8-16 MP originals: <= 3 requests and <= 4x the covered MCUs' bytes per crop on average, as the
    server (the proxy in front of it) counts them; every crop exact."""
    photos = sorted(FULLRES.glob("*.jpg"))[:6]
    src = tmp_path / "src"
    src.mkdir()
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    s3_server.make_bucket("fullres")
    proxy = object_store.start_proxy(s3_server, max_upstream=8)
    try:
        for k, v in proxy.env.items():
            monkeypatch.setenv(k, v)
        assert cli.main(["build-data", "--images", str(src), "--out", "s3://fullres/rec", "--no-progress",
                         "--workers", "1"]) == 0
        build = reader.Build("s3://fullres/rec")
        assert len(build.records(list(range(len(build))))) == len(photos)
        rng = np.random.default_rng(0)
        proxy.reset()
        before = build.ranges.stats["requests"]
        covered, n = 0, 0
        for rep in range(4):
            idx = list(range(len(build)))
            pos = [np.array([[rng.integers(0, int(build.index[i]["height"]) - 127),
                              rng.integers(0, int(build.index[i]["width"]) - 127)]]) for i in idx]
            got = build.fetch(idx, pos, 128)
            for (rec, crop), p in zip(got, pos):
                y, x = (int(v) for v in p[0])
                path = src / Path(rec["path"]).name
                np.testing.assert_array_equal(crop[0], _pixels(path)[y:y + 128, x:x + 128])
                covered += _covered_bytes(path, y, x, 128)
                n += 1
        st = proxy.stats()
    finally:
        proxy.stop()
    gets = st["requests"].get("GET", 0)
    print(f"{gets / n:.2f} requests and {st['bytes_out']['GET'] / covered:.2f}x the covered MCUs' bytes per crop")
    assert gets / n <= 3.0, st
    assert st["bytes_out"]["GET"] / covered <= 4.0, (st["bytes_out"], covered)
    assert gets == build.ranges.stats["requests"] - before  # the client counts what the server saw


def test_faults_are_retried_counted_and_never_read_as_data(local_build, s3_server, monkeypatch, capfd):
    s3_server.make_bucket("faulty")
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    _build("s3://faulty/rec")
    proxy = object_store.start_proxy(s3_server, fault_rate=0.05, seed=1, timeout_hold_s=3.0, max_upstream=8)
    try:
        for k, v in proxy.env.items():
            monkeypatch.setenv(k, v)
        got, want = _batches("s3://faulty/rec", 1, 6, log_every_s=0.0), _batches(local_build, 1, 6)
        st = proxy.stats()
    finally:
        proxy.stop()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["image_id"], w["image_id"])
    assert sum(st["faults"].values()) > 0, st
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("loader (pid")]
    retried = max(int(ln.split(" requests, ")[1].split(" retried")[0]) for ln in lines)
    assert retried > 0, lines


_FD_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    from exif_jax.data import reader
    build = reader.Build(sys.argv[1])
    rng = np.random.default_rng(0)
    peak = 0
    order = rng.permutation(len(build))
    for start in range(0, len(order), 100):
        idx = order[start:start + 100].tolist()
        build.fetch(idx, [np.zeros((1, 2), np.int64)] * len(idx), 64)
        peak = max(peak, len(os.listdir("/proc/self/fd")))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("PEAK", peak, len(set(int(s) for s in build.index["shard"])), int(rss_mb))
""")


def _many_shards(src: str, dst: str, n: int) -> None:
    """A build of n one-photo shards for the loader: the first photo's blob as each shard's pixel file (blobs
    are shard-relative) and the index rows pointing at them. The ArrayRecord files are empty placeholders:
    the loader lists their names and never opens them."""
    one = reader.Build(src)
    first = int(np.flatnonzero(one.index["shard"] == 0)[0])
    row = one.index[first:first + 1].copy()
    blob = storage.read_bytes(storage.join(src, layout.sibling(layout.shard_name(0, 3), layout.PIXELS_SUFFIX)))
    blob = blob[int(row["at"][0]):int(row["at"][0] + row["len"][0])]
    row["at"] = 0
    rows = np.repeat(row, n)
    rows["shard"] = np.arange(n)
    jobs = [(storage.join(dst, layout.sibling(layout.shard_name(i, n), suf)), data)
            for i in range(n) for suf, data in ((".array_record", b""), (layout.PIXELS_SUFFIX, blob))]
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda job: storage.write_bytes(*job), jobs))
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    storage.write_bytes(storage.join(dst, layout.BUILD_INDEX), buf.getvalue())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_open_files_and_memory_bounded_with_2000_shards(local_build, tmp_path, s3_server, monkeypatch, where):
    """2,000 shards under `ulimit -n 256`: at most 64 files open, and the same memory as 20 shards (a reader
    holds index rows per photo, nothing per shard but its file name)."""
    got = {}
    for n in (20, 2000):
        if where == "local":
            dst = str(tmp_path / f"many{n}")
            env = dict(os.environ)
        else:
            s3_server.make_bucket(f"many{n}")
            for k, v in s3_server.env.items():
                monkeypatch.setenv(k, v)
            dst = f"s3://many{n}/rec"
            env = {**os.environ, **s3_server.env}
        _many_shards(local_build, dst, n)
        out = subprocess.run([sys.executable, "-c", _FD_SCRIPT.format(repo=str(REPO)), dst], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        peak, shards, rss = (int(v) for v in out.stdout.split("PEAK")[1].split())
        assert shards == n and peak <= 64, out.stdout
        got[n] = rss
    assert got[2000] - got[20] < 40, got  # MB: 100x the shards, ~2,000 more file names and index rows


def test_eval_reads_and_writes_object_storage(s3_server, monkeypatch, tmp_path):
    """A subcommand that works on local files gets local copies of its gs:// / s3:// inputs and uploads its
    -o/--out: localize a photo from a bucket into a bucket, as from and to disk."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    s3_server.make_bucket("evalio")
    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    storage.upload_file(str(photo), f"s3://evalio/in/{photo.name}")
    args = ["--baseline", "noise", "--stride", "64", "--no-progress"]
    assert cli.main(["localize", f"s3://evalio/in/{photo.name}", "-o", "s3://evalio/maps", *args]) == 0
    assert cli.main(["localize", str(photo), "-o", str(tmp_path / "maps"), *args]) == 0
    local = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*") if p.is_file())
    assert local and storage.walk_files("s3://evalio/maps") == local
    with pytest.raises(FileNotFoundError, match="s3://evalio/in/nope.jpg"):
        cli.main(["localize", "s3://evalio/in/nope.jpg", "-o", "s3://evalio/maps2", *args])


def test_truncated_or_damaged_pixel_file_is_named(local_build, tmp_path):
    """A pixel file shorter than its index says, or with a band's bytes overwritten, is an error naming it."""
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(local_build, d)
    build = reader.Build(str(d))
    row = build.index[0]
    pix = d / layout.sibling(layout.shard_name(int(row["shard"]), 3), layout.PIXELS_SUFFIX)
    data = bytearray(pix.read_bytes())
    # Overwrite the first band's bytes (after the head) with zeros: its RST markers are gone.
    start = int(row["at"]) + int(row["head_len"]) + 4096
    data[start:start + 20000] = bytes(20000)
    pix.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{pix}.*damaged"):
        reader.Build(str(d)).fetch([0], [np.zeros((1, 2), np.int64)], 128)
    pix.write_bytes(bytes(data[: int(row["at"]) + 100]))
    with pytest.raises(OSError, match=f"{pix}.*truncated"):
        reader.Build(str(d)).fetch([0], [np.zeros((1, 2), np.int64)], 128)
