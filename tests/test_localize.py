"""Zero-shot localization end to end: patch embedding (sharded), the hand-made two-camera photo, loading a
trainer-layout checkpoint, and `exif-jax localize` on bundled photos with bad inputs mixed in."""
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from exif_jax import cli
from exif_jax.eval import baselines, localize
from exif_jax.eval.patches import default_mesh, embed_patches, make_grid, model_embedder

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "exif_jax" / "assets" / "photos").glob("*.jpg"))


def _camera(base: np.ndarray, sigma: float, quality: int, rng: np.random.Generator) -> np.ndarray:
    """The same scene through a 'camera': its own sensor noise level and JPEG quality."""
    noisy = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.uniform(30, 220, (h // 16, w // 16, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.slow
def test_two_camera_photo_is_split_by_a_hand_made_embedding():
    rng = np.random.default_rng(0)
    h, w = 128, 256
    base = _scene(h, w, rng)
    cam_a, cam_b = _camera(base, 2.0, 92, rng), _camera(base, 6.0, 60, rng)
    spliced = (np.arange(w) >= 160)[None, :].repeat(h, 0)  # the right 3/8 from the other camera
    photo = np.where(spliced[..., None], cam_b, cam_a)
    emb = baselines.noise_embedder(32)
    ms = localize.localize_image(photo, emb, stride=8)
    nc = localize.localize_image(photo, emb, stride=8, consensus="ncut")
    m = ms.map
    assert m.shape == (h, w) and ms.grid.spread == 4
    assert _iou(m > (m.min() + m.max()) / 2, spliced) > 0.8
    assert _iou(nc.maps["ncut_labels"], spliced) > 0.8
    np.testing.assert_array_equal(nc.maps["meanshift"], m)  # one consensus pass gives every map
    assert nc.maps["pca"].shape == (h, w, 3) and 0 <= nc.maps["pca"].min() and nc.maps["pca"].max() <= 1
    chance = localize.localize_image(photo, baselines.random_embedder(32), stride=8).maps["ncut_labels"]
    assert _iou(chance, spliced) < 0.5  # the split comes from the features, not from the machinery
    clean = localize.localize_image(cam_a, emb, stride=8)
    assert ms.scores["score_ncut"] > clean.scores["score_ncut"]
    assert ms.scores["score_ms"] > clean.scores["score_ms"]


@pytest.mark.slow
def test_sharded_batches_embed_the_right_crops():
    photo = np.asarray(Image.open(PHOTOS[0]).convert("RGB"))[:96, :150]
    g = make_grid(*photo.shape[:2], 32, stride=11)  # 7 x 11 = 77 patches: padded batches
    crops = np.stack([photo[t:t + 32, l:l + 32] for t, l in g.starts()])
    emb = baselines.noise_embedder(32)
    want = np.asarray(baselines.noise_features(crops))
    assert len(jax.devices()) == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    for mesh, batch in ((default_mesh(), 24), (default_mesh(jax.devices()[:1]), 50)):
        got = np.asarray(embed_patches(emb, photo, g, batch=batch, mesh=mesh))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _embed_ref(model, x):
    from flax import nnx

    return np.asarray(nnx.jit(lambda m, x: m.embed_image(x))(model, x))


@pytest.mark.slow
def test_workdir_load_model(tiny_workdir):
    from exif_jax import workdir

    wd, model = tiny_workdir
    loaded, config, step = workdir.load_model(str(wd))
    assert config.data.crop_size == 32 and step == 3
    x = np.asarray(Image.open(PHOTOS[1]).convert("RGB"))[None, :32, :32]
    np.testing.assert_allclose(_embed_ref(loaded, x), _embed_ref(model, x), atol=1e-6)
    loaded2, _, _ = workdir.load_model(str(wd / "ckpt"))  # the ckpt dir works too
    assert isinstance(loaded2, type(loaded))
    with pytest.raises(FileNotFoundError, match="config.json"):
        workdir.load_model(str(wd.parent))
    # The model embedder crops and batches like the numpy reference (bf16 compute: loose tolerance).
    photo = np.asarray(Image.open(PHOTOS[1]).convert("RGB"))[:80, :120]
    g = make_grid(80, 120, 32, stride=16)
    got = np.asarray(embed_patches(model_embedder(loaded, 32), photo, g, batch=8))
    crops = np.stack([photo[t:t + 32, l:l + 32] for t, l in g.starts()])
    np.testing.assert_allclose(got, _embed_ref(loaded, crops), atol=2e-2)


def test_cli_localize_with_bad_files(trained_workdir, tmp_path, capsys):
    wd = trained_workdir  # a really trained (4-step) checkpoint
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(small)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    rc = cli.main(["localize", str(small), str(PHOTOS[0]), str(broken), str(PHOTOS[2]),
                   "--checkpoint", str(wd), "-o", str(out), "--stride", "24"])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"{small}: 40x20 px is smaller than one 32x32 patch" in captured.err
    assert f"{broken}: cannot decode image: OSError" in captured.err
    assert "2 of 4 photos failed" in captured.err
    lines = (out / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 2 and [json.loads(x) for x in captured.out.splitlines()] == [json.loads(x) for x in lines]
    for photo, line in zip((PHOTOS[0], PHOTOS[2]), lines):
        rec = json.loads(line)
        assert rec["photo"] == str(photo) and rec["consensus"] == "meanshift" and rec["stride"] == 24
        assert np.isfinite([rec["score"], rec["score_ms"], rec["score_ncut"]]).all()
        assert Image.open(out / f"{photo.stem}.png").size[0] > 100
        m = np.load(out / f"{photo.stem}.npy")
        assert m.shape == (rec["height"], rec["width"]) == (384, 512) and m.dtype == np.float32
        assert np.isfinite(m).all()


# ------------------------------------------------------------------------------- --paper-color-bug

def _pixel_probe(patch: int):
    """An embedder whose 'embedding' is the patch it was fed, as floats: shows exactly what the tower sees."""
    from exif_jax.eval.patches import PatchEmbedder

    return PatchEmbedder(lambda params, x: x.reshape(x.shape[0], -1).astype(np.float32), {}, patch, "probe")


@pytest.mark.torch
def test_paper_color_bug_feeds_the_papers_pixels():
    from exif_jax.eval.patches import with_paper_color_bug

    photo = np.asarray(Image.open(PHOTOS[3]).convert("RGB"))[:64, :96].copy()
    photo[:8, :32] = np.arange(256, dtype=np.uint8).reshape(8, 32, 1)  # every value 0..255 in a patch
    g = make_grid(64, 96, 32, stride=16)
    crops = np.stack([photo[t:t + 32, l:l + 32] for t, l in g.starts()])
    fed = lambda e: np.asarray(embed_patches(e, photo, g, batch=8)).reshape(crops.shape)  # noqa: E731
    np.testing.assert_array_equal(fed(_pixel_probe(32)), crops)  # default: the pixels themselves
    want = (256 - crops.astype(np.int64)) % 256  # the paper's wrap, written independently
    assert want[0, 0, 0, 0] == 0 and want[0, 0, 1, 0] == 255 and want[0, 7, 31, 0] == 1
    got = fed(with_paper_color_bug(_pixel_probe(32)))
    np.testing.assert_array_equal(got, want)
    assert (got != crops).mean() > 0.99  # all but the zeros (and 128) change
    torch = pytest.importorskip("torch")  # the paper's own operation: float pixels, .mul(255).byte()
    paper = torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float().mul(255).byte().numpy()
    np.testing.assert_array_equal(got, paper.transpose(0, 2, 3, 1))


@pytest.mark.slow
def test_cli_paper_color_bug_is_the_model_on_wrapped_photos(tiny_workdir, tmp_path, capsys):
    """`localize --paper-color-bug` on a photo == plain `localize` on that photo colour-wrapped in numpy."""
    wd, _ = tiny_workdir
    photo = np.asarray(Image.open(PHOTOS[4]).convert("RGB"))[:64, :96]
    plain, wrapped = tmp_path / "plain.png", tmp_path / "wrapped.png"
    Image.fromarray(photo).save(plain)
    Image.fromarray(((256 - photo.astype(np.int64)) % 256).astype(np.uint8)).save(wrapped)  # lossless
    common = ["--checkpoint", str(wd), "--stride", "16"]
    assert cli.main(["localize", str(plain), "-o", str(tmp_path / "bug"), "--paper-color-bug", *common]) == 0
    assert cli.main(["localize", str(plain), str(wrapped), "-o", str(tmp_path / "ok"), *common]) == 0
    bug, ok, ok_wrapped = (np.load(tmp_path / d / f"{s}.npy") for d, s in
                           (("bug", "plain"), ("ok", "plain"), ("ok", "wrapped")))
    np.testing.assert_allclose(bug, ok_wrapped, atol=1e-5)
    assert np.abs(bug - ok).max() > 1e-3  # the flag changes the result; without it nothing changes
    line = json.loads((tmp_path / "bug" / "scores.jsonl").read_text())
    assert line["embedder"].endswith("(paper color bug)")
    capsys.readouterr()
    assert cli.main(["localize", str(plain), "-o", str(tmp_path / "x"), "--baseline", "noise",
                     "--paper-color-bug"]) == 2
    assert "--paper-color-bug" in capsys.readouterr().err
