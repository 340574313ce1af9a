"""build-data on Ray (local Ray, 2 CPUs): the same files as the process pool from a folder + a webdataset tar +
a parquet file (duplicates across them, hostile files, a failed download), a Ray worker killed mid-shard, the
driver killed mid-build, and the img2dataset readers themselves."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from exif_jax import exif, storage
from exif_jax.cli import main as cli
from exif_jax.data import build, inputs

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "exif_jax" / "assets" / "photos"
SHARED = REPO.parent / "shared" / "data"
EDGE = SHARED / "exif_edge"
pytestmark = [pytest.mark.skipif(not EDGE.is_dir(), reason=f"shared data not found at {SHARED}"),
              pytest.mark.subprocess]  # a local Ray cluster

# Before ray is imported: a local Ray on the loopback interface only (its single-machine mode), no token warning.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from exif_jax.data.build_ray import RayEngine  # noqa: E402


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings() -> build.Settings:
    return build.Settings(tag_order=tuple(exif.DEFAULT_TAGS))


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def assert_same_files(a: Path, b: Path) -> None:
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between {a} and {b}"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module (2 CPUs, loopback); yields its address for drivers in subprocesses."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Inputs of three kinds, as img2dataset writes them, plus what a correct build must make of them."""
    d = tmp_path_factory.mktemp("inputs")
    bundled = sorted(PHOTOS.glob("*.jpg"))
    shared = sorted((SHARED / "photos").glob("*.jpg"))[:3]
    edge = sorted(EDGE.iterdir())
    tar = d / "00000.tar"
    with tarfile.open(tar, "w") as tf:  # webdataset: <key>.jpg + <key>.json, as img2dataset writes them
        for i, p in enumerate(bundled[:3] + shared[:1] + edge):  # 3 duplicates of folder photos, 44 hostile
            _tar_add(tf, f"{i:09d}.jpg", p.read_bytes())
            _tar_add(tf, f"{i:09d}.json", json.dumps({"key": f"{i:09d}", "status": "success"}).encode())
        _tar_add(tf, "notes.txt", b"not a sample")  # a member of no photo's sample: other_extension
    rows = [shared[1], shared[2], bundled[4], sorted(EDGE.glob("fuzz_crash-*"))[0], None]  # None: failed download
    table = pa.table({"key": [f"{i:09d}" for i in range(len(rows))],
                      "jpg": [p.read_bytes() if p else None for p in rows],
                      "status": ["success"] * 4 + ["failed_to_download"]})
    parquet = d / "00000.parquet"
    pq.write_table(table, parquet, row_group_size=2)  # three row groups
    items, pre = build.items_from_folder(str(PHOTOS))
    for listed, skipped in (inputs.list_webdataset([str(tar)]), inputs.list_parquet([str(parquet)])):
        items += [build.Item(src=s.src, name=s.name, part=s.part) for s in listed]
        for r, v in skipped.items():
            pre.setdefault(r, []).extend(v)
    contents = [p.read_bytes() for p in bundled + bundled[:3] + shared[:1] + edge + [p for p in rows if p]]
    return {"items": items, "pre": pre, "tar": tar, "parquet": parquet, "n_inputs": len(contents) + 1,
            "unique": len({sha(c) for c in contents}), "readable": len(contents)}


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The process-pool build (2 processes) of the mixed inputs: what the Ray build must reproduce."""
    out = tmp_path_factory.mktemp("pool") / "out"
    s = build.build_dataset(sources["items"], str(out), settings(), num_shards=4, workers=2, progress=False,
                            pre_skipped=sources["pre"])
    return out, s


def test_mixed_inputs_same_files_as_the_pool(cluster, sources, reference, tmp_path):
    ref, s_ref = reference
    out = tmp_path / "ray"
    s = build.build_dataset(sources["items"], str(out), settings(), num_shards=4, progress=False,
                            pre_skipped=sources["pre"], engine=RayEngine())
    assert_same_files(ref, out)  # records, pixel files, sidecars, summary.json: byte for byte
    assert s == s_ref
    engine = RayEngine()  # listing on the workers gives the same sources, in the same order
    tar, parquet = [str(sources["tar"])], [str(sources["parquet"])]
    assert inputs.list_webdataset(tar, engine=engine) == inputs.list_webdataset(tar)
    assert inputs.list_parquet(parquet, engine=engine) == inputs.list_parquet(parquet)
    sk = {r: v["count"] for r, v in s["skipped"].items()}
    assert s["inputs"] == sources["n_inputs"] + 2  # + SOURCES.md and notes.txt
    assert s["unique"] == sources["unique"] and sk["duplicate"] == sources["readable"] - sources["unique"] >= 4
    assert sk["missing"] == 1 and s["skipped"]["missing"]["files"] == [f"{sources['parquet']}/000000004"]
    assert sk["other_extension"] == 2 and f"{sources['tar']}/notes.txt" in s["skipped"]["other_extension"]["files"]
    assert sk["not_an_image"] >= 12  # the hostile files are skipped with their reasons, not a crash
    assert s["kept"] + sum(sk.values()) == s["inputs"]
    # Members are read as their own bytes: each kept tar/parquet photo's record has its file's sha256.
    recs = {r["path"]: r for r in build.read_records(str(out))}
    kept_tar = [it for it in sources["items"] if isinstance(it.part, inputs.TarMember) and it.name in recs]
    assert len(kept_tar) >= 4
    for it in kept_tar + [it for it in sources["items"] if isinstance(it.part, inputs.ParquetRow)
                          and it.name in recs]:
        assert recs[it.name]["sha256"] == sha(inputs.read_item(it))


def _descendants_titled(title: str) -> list[psutil.Process]:
    """This test's own Ray workers (children of the raylet it started) running a task of that name."""
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0] == title:
            found.append(p)
    return found


def test_worker_killed_mid_shard_is_retried(cluster, sources, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "ray"
    killed: list[int] = []
    stop = threading.Event()

    def kill_one():  # Ray titles a worker process "ray::<function>" while it runs that task
        while not stop.is_set() and not killed:
            for p in _descendants_titled("ray::build_shard"):
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
                break
            time.sleep(0.005)

    t = threading.Thread(target=kill_one)
    t.start()
    try:
        build.build_dataset(sources["items"], str(out), settings(), num_shards=4, progress=False,
                            pre_skipped=sources["pre"], engine=RayEngine())
    finally:
        stop.set()
        t.join()
    assert killed, "no build_shard task was seen running"
    assert_same_files(ref, out)  # the retried shard is whole; no temporary file is left visible as a shard


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_driver_killed_then_rerun_builds_only_the_missing_shards(cluster, tmp_path):
    """A driver in a subprocess joins the module's Ray (--ray-address), is SIGKILLed after its first shard,
    and the same command run again builds only the shards that had no sidecar."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = ["build-data", "--images", str(PHOTOS), "--records-per-shard", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "exif_jax.cli", *args, "--out", str(out), "--engine", "ray",
                             "--ray-address", cluster], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until(lambda: list(out.glob("records-*.json")) or proc.poll() is not None, 120, "a first shard")
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray ends a dead driver's tasks; wait for them, so nothing of the first run writes during the second.
    _wait_until(lambda: not _descendants_titled("ray::build_shard"), 60, "the dead driver's tasks to end")
    done = {p.name for p in out.glob("records-*.json")}
    assert 0 < len(done) < 18 and not (out / "summary.json").exists()
    for shard in out.glob("records-*.array_record"):  # a visible shard is a whole one (renamed when complete)
        assert shard.with_suffix(".pixels").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in done}
    assert cli([*args, "--out", str(out), "--engine", "ray"]) == 0  # joins the module's Ray (initialized)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in done}
    assert after == before, "a finished shard was rebuilt"
    assert cli([*args, "--out", str(ref), "--workers", "2"]) == 0
    assert_same_files(ref, out)
    assert not list(out.glob("*.tmp"))


def test_cli_webdataset_and_parquet_on_ray(cluster, sources, tmp_path, capsys):
    out_w, out_p = tmp_path / "w", tmp_path / "p"
    assert cli(["build-data", "--webdataset", str(sources["tar"]), "--out", str(out_w), "--engine", "ray",
                "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "not_an_image" in printed and "other_extension" in printed  # the per-reason skip table
    s = json.loads((out_w / "summary.json").read_text())
    assert s["inputs"] == 3 + 1 + 44 + 1 and s["kept"] >= 4
    assert cli(["build-data", "--parquet", str(sources["parquet"].parent), "--out", str(out_p), "--engine", "ray",
                "--image-column", "jpg", "--no-progress"]) == 0
    s = json.loads((out_p / "summary.json").read_text())
    assert s["inputs"] == 5 and s["kept"] == 3 and s["skipped"]["missing"]["count"] == 1
    assert s["skipped_total"] == 2  # the failed download and the fuzzed file


def test_cli_flag_errors(sources, tmp_path, capsys):
    base = ["build-data", "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli([*base, "--images", str(PHOTOS), "--ray-address", "auto"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert cli([*base, "--images", str(PHOTOS), "--image-column", "jpg"]) == 2
    assert "--parquet" in capsys.readouterr().err
    assert cli([*base, "--engine", "ray", "--ray-address", "auto", "--workers", "2", "--images", str(PHOTOS)]) == 2
    with pytest.raises(inputs.MissingColumn, match=f"{sources['parquet']}: no column 'png'"):
        cli([*base, "--parquet", str(sources["parquet"]), "--image-column", "png"])


def test_readers(sources, tmp_path):
    """Tar members are byte ranges; a truncated or compressed tar and a corrupt parquet are named skips."""
    listed, skipped = inputs.list_webdataset([str(sources["tar"])])
    first = listed[0]
    with tarfile.open(sources["tar"]) as tf:
        assert inputs.read_item(first) == tf.extractfile(first.name.rsplit("/", 1)[1]).read()
    assert skipped == {"other_extension": [f"{sources['tar']}/notes.txt"]}
    cut = tmp_path / "cut.tar"
    cut.write_bytes(sources["tar"].read_bytes()[:first.part.offset + first.part.size // 2])
    item = build.Item(src=str(cut), name="x", part=first.part)
    with pytest.raises(OSError, match="truncated tar member"):
        inputs.read_item(item)
    assert build._hash(item)[1] == "unreadable"
    gz = tmp_path / "gz.tar"
    with tarfile.open(gz, "w:gz") as tf:
        _tar_add(tf, "a.jpg", b"x")
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_bytes(b"PAR1 not really")
    assert set(inputs.list_webdataset([str(gz)])[1]) == {"unreadable_tar"}
    assert inputs.list_parquet([str(bad_pq)])[1]["unreadable_parquet"][0].startswith(f"{bad_pq}: ")


def test_webdataset_and_parquet_in_a_bucket(sources, s3_server, tmp_path, monkeypatch):
    """img2dataset output in s3:// builds the same records as from local disk, output to the bucket too."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    s3_server.make_bucket("wds")
    for key in ("tar", "parquet"):
        storage.upload_file(str(sources[key]), f"s3://wds/in/{sources[key].name}")
    local_out, remote_out = tmp_path / "local", "s3://wds/out"
    for out, tar, pq in ((str(local_out), sources["tar"], sources["parquet"]),
                         (remote_out, f"s3://wds/in/{sources['tar'].name}", f"s3://wds/in/{sources['parquet'].name}")):
        assert cli(["build-data", "--webdataset", str(tar), "--out", out, "--workers", "1", "--no-progress"]) == 0
        assert cli(["build-data", "--parquet", str(pq), "--out", out + "-pq", "--workers", "1",
                    "--no-progress"]) == 0
    for suffix in ("", "-pq"):
        # The same photos and texts; each record's path names where its bytes came from (the bucket's tar).
        want = [(r["sha256"], r["text"]) for r in build.read_records(f"{local_out}{suffix}")]
        got = list(build.read_records(f"{remote_out}{suffix}"))
        assert want and [(r["sha256"], r["text"]) for r in got] == want
        assert all(r["path"].startswith("s3://wds/in/") for r in got), got[0]["path"]
    with pytest.raises(FileNotFoundError, match="s3://wds/in/nothing.tar"):
        inputs.list_webdataset(["s3://wds/in/nothing.tar"])


def test_yfcc_text_with_img2dataset_photos(cluster, tmp_path):
    """--yfcc-exif + --webdataset/--parquet: EXIF text from the TSV line, bytes from the sample whose photo_id
    (img2dataset --save_additional_columns '["photo_id"]') is the line's; the record's path is the photo id."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:3]
    lines, tar, rows = [], tmp_path / "00000.tar", []
    with tarfile.open(tar, "w") as tf:
        for i, p in enumerate(photos):
            pid = str(5000 + i)
            tags = exif.read_tags(str(p))
            tags["Model"] = f"From TSV {i}"  # the text comes from the TSV, not the file
            lines.append(exif.to_yfcc_line(pid, {"Exif IFD0": tags}))
            _tar_add(tf, f"{i:09d}.jpg", p.read_bytes())
            _tar_add(tf, f"{i:09d}.json", json.dumps({"photo_id": int(pid)}).encode())
            rows.append({"key": f"{i:09d}", "jpg": p.read_bytes(), "photo_id": pid})
        _tar_add(tf, "000000009.jpg", photos[0].read_bytes())  # a sample without a .json: no photo id
    lines.append(exif.to_yfcc_line("6000", {"Exif IFD0": {"Make": "X", "Model": "Y"}}))  # never fetched
    tsv = tmp_path / "exif.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    for flag, path in (("--webdataset", tar), ("--parquet", tmp_path / "00000.parquet")):
        out = tmp_path / flag.strip("-")
        assert cli(["build-data", "--yfcc-exif", str(tsv), flag, str(path), "--out", str(out), "--engine", "ray",
                    "--no-progress"]) == 0
        recs = {r["path"]: r for r in build.read_records(str(out))}
        assert sorted(recs) == ["5000", "5001", "5002"]
        for i, p in enumerate(photos):
            r = recs[str(5000 + i)]
            assert f"Model: From TSV {i}" in r["text"] and r["sha256"] == sha(p.read_bytes())
        s = json.loads((out / "summary.json").read_text())
        no_id = {"no_sample_id": {"count": 1, "files": [f"{tar}/000000009.jpg"]}} if flag == "--webdataset" else {}
        assert s["skipped"] == {"missing": {"count": 1, "files": ["6000"]}, **no_id}
    assert cli(["build-data", "--yfcc-exif", str(tsv), "--webdataset", str(tar), "--yfcc-images", str(tmp_path),
                "--out", str(tmp_path / "x")]) == 2
    assert cli(["build-data", "--images", str(PHOTOS), "--webdataset", str(tar), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(inputs.MissingColumn, match="no column 'photoid' of sample ids"):
        inputs.list_parquet([str(tmp_path / "00000.parquet")], id_field="photoid")
