"""Benchmark loaders on tiny trees that mirror each archive's layout, file names and mask conventions."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exif_jax.eval.datasets import LOADERS, Sample, load_dataset, load_mask

H, W = 48, 64
REGION = np.zeros((H, W), dtype=bool)
REGION[16:32, 16:48] = True  # on the 16-px JPEG grid, so JPEG-coded masks stay exact after thresholds


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def gray_mask(path: Path, inside: int, outside: int, band: int | None = None, faint: int = 0, **save) -> None:
    """REGION = `inside`, rest = `outside`; optional `band` value on the region's right half, and a
    `faint` gray block outside the region (the low-level noise a JPEG-coded mask carries)."""
    m = np.where(REGION, inside, outside).astype(np.uint8)
    if band is not None:
        m[16:32, 32:48] = band
    if faint:
        m[0:16, 0:16] = faint
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path, **save)


def check(samples: list[Sample], expected: dict[str, int], kind: str) -> None:
    """Names and labels as expected; each image opens and each mask equals REGION (or is empty)."""
    assert {s.name: s.label for s in samples} == expected
    for s in samples:
        assert s.kind == kind and s.image_path.is_file()
        with Image.open(s.image_path) as im:
            shape = (im.height, im.width)
        mask = load_mask(s, shape)
        assert mask.dtype == bool and mask.shape == shape
        assert np.array_equal(mask, REGION if s.label else np.zeros_like(REGION)), s.name


def test_columbia(tmp_path):
    root = tmp_path / "columbia"
    for i, stem in enumerate(("canong3_02_sub_01", "nikond70_05_sub_03")):
        photo(root / "4cam_auth" / f"{stem}.tif", i)
    edge = root / "4cam_splc" / "edgemask"
    edge.mkdir(parents=True)
    for i, stem in enumerate(("canong3_canonxt_sub_01", "canong3_nikond70_sub_13")):
        photo(root / "4cam_splc" / f"{stem}.tif", 10 + i)
        # host region red, spliced region green; darker shades near the boundary; stored as JPEG
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[..., 0] = 255
        rgb[32:48, 16:48] = (200, 0, 0)
        rgb[REGION] = (0, 255, 0)
        rgb[16:32, 32:48] = (0, 200, 0)
        Image.fromarray(rgb).save(edge / f"{stem}_edgemask.jpg", quality=90)
    samples = load_dataset(f"columbia:{root}")
    check(samples, {"canong3_02_sub_01": 0, "nikond70_05_sub_03": 0,
                    "canong3_canonxt_sub_01": 1, "canong3_nikond70_sub_13": 1}, "columbia")
    # the red (host) region is not spliced even though it is bright: exact colours are not required
    assert not load_mask(samples[-1], (H, W))[32:48].any()

    # one more spliced image without its edge mask: kept for detection, mask access is refused
    photo(root / "4cam_splc" / "canong3_kodakdcs330_sub_01.tif", 20)
    with pytest.warns(UserWarning, match="1 spliced images have no mask"):
        samples = load_dataset(f"columbia:{root}")
    lost = next(s for s in samples if s.name == "canong3_kodakdcs330_sub_01")
    assert lost.mask_path is None and lost.label == 1
    with pytest.raises(ValueError, match="without a ground-truth mask"):
        load_mask(lost, (H, W))


def test_columbia_nested_and_missing(tmp_path):
    root = tmp_path / "col"
    photo(root / "4cam_auth" / "4cam_auth" / "a.tif")
    photo(root / "4cam_splc" / "4cam_splc" / "s.tif", 1)
    gray_mask(root / "4cam_splc" / "4cam_splc" / "edgemask" / "s_edgemask.jpg", 0, 0)
    assert {s.name: s.label for s in load_dataset(f"columbia:{root}")} == {"a": 0, "s": 1}
    (tmp_path / "half" / "4cam_auth").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"half/4cam_splc.*4cam_auth/ and 4cam_splc/"):
        load_dataset(f"columbia:{tmp_path / 'half'}")


def test_dso1_black_is_spliced(tmp_path):
    base = tmp_path / "tifs-database"
    for i, name in enumerate(("normal-01", "normal-02", "splicing-01", "splicing-02")):
        photo(base / "DSO-1" / f"{name}.png", i)
    masks = base / "DSO-1-Fake-Images-Masks"
    gray_mask(masks / "splicing-01.png", inside=0, outside=255)
    # a half-size mask: resized (nearest) with a warning naming the file
    small = Image.fromarray(np.where(REGION[::2, ::2], 0, 255).astype(np.uint8))
    small.save(masks / "splicing-02.png")
    samples = load_dataset(f"dso1:{tmp_path}")  # the folder holding tifs-database/ works too
    assert samples == load_dataset(f"dso1:{base}")
    with pytest.warns(UserWarning, match="splicing-02.png: mask is 32x24, image is 64x48"):
        check(samples, {"normal-01": 0, "normal-02": 0, "splicing-01": 1, "splicing-02": 1}, "dso1")


def test_korus_gray_and_white_are_tampered(tmp_path):
    base = tmp_path / "data-images"
    expected = {}
    for c, cam in enumerate(("Canon_60D", "Sony_A57")):
        for i, stem in enumerate((f"r0{c}a1b2", f"r0{c}c3d4")):
            photo(base / cam / "pristine" / f"{stem}.TIF", 10 * c + i)
            photo(base / cam / "tampered-realistic" / f"{stem}.TIF", 10 * c + i + 5)
            gray_mask(base / cam / "ground-truth" / f"{stem}.PNG", inside=255, outside=0, band=60)
            expected[f"{cam}/pristine/{stem}"] = 0
            expected[f"{cam}/tampered-realistic/{stem}"] = 1
    (base / "readme.md").write_text("Realistic Tampering Dataset")
    check(load_dataset(f"korus:{tmp_path}"), expected, "korus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tampered-realistic"):
        load_dataset(f"korus:{tmp_path / 'empty'}")


def test_inthewild(tmp_path):
    base = tmp_path / "label_in_wild"
    for i, stem in enumerate(("1102", "2251")):
        photo(base / "images" / f"{stem}.jpg", i)
        gray_mask(base / "masks" / f"{stem}.png", inside=255, outside=0)
    check(load_dataset(f"inthewild:{tmp_path}"), {"1102": 1, "2251": 1}, "inthewild")
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="only_images/masks"):
        load_dataset(f"inthewild:{tmp_path / 'only_images'}")


def test_hays_masks_beside_images(tmp_path):
    root = tmp_path / "test_set"
    photo(root / "fountain.jpg", 0)
    gray_mask(root / "fountain_mask.png", inside=255, outside=0)
    photo(root / "harbor.png", 1)
    gray_mask(root / "harbor_mask.jpg", inside=255, outside=0, faint=6, quality=60)  # noise is not region
    check(load_dataset(f"hays:{tmp_path}"), {"test_set/fountain": 1, "test_set/harbor": 1}, "hays")
    (root / "lonely_mask.png").write_bytes((root / "fountain_mask.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="lonely_mask.png: mask without its image"):
        load_dataset(f"hays:{tmp_path}")


def test_casia1_splicing_only(tmp_path):
    data = tmp_path / "CASIA 1.0 dataset"
    photo(data / "Au" / "Au_ani_0001.jpg", 0)
    photo(data / "Au" / "Au_sec_0002.jpg", 1)
    sp = "Sp_D_CND_A_pla0005_pla0023_0281"
    photo(data / "Modified Tp" / "Tp" / "Sp" / f"{sp}.jpg", 2)
    photo(data / "Modified Tp" / "Tp" / "CM" / "Sp_S_CND_A_pla0016_pla0016_0196.jpg", 3)
    gray_mask(tmp_path / "CASIA 1.0 groundtruth" / "Sp" / f"{sp}_gt.png", inside=255, outside=0)
    check(load_dataset(f"casia1:{data}"), {"Au_ani_0001": 0, "Au_sec_0002": 0, sp: 1}, "casia1")
    (tmp_path / "bare" / "Au").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Tp/Sp"):
        load_dataset(f"casia1:{tmp_path / 'bare'}")


def test_casia2(tmp_path):
    root = tmp_path / "CASIA2"
    photo(root / "Au" / "Au_ani_00001.jpg", 0)
    photo(root / "Au" / "Au_arc_00002.bmp", 1)
    spliced, copymove = "Tp_D_CRN_S_N_cha00063_art00014_11818", "Tp_S_NRN_M_N_pla00020_pla00020_10988"
    photo(root / "Tp" / f"{spliced}.jpg", 2)
    photo(root / "Tp" / f"{copymove}.tif", 3)
    for stem in (spliced, copymove):
        gray_mask(root / "CASIA 2 Groundtruth" / f"{stem}_gt.png", inside=255, outside=0)
    check(load_dataset(f"casia2:{root}"), {"Au_ani_00001": 0, "Au_arc_00002": 0, spliced: 1, copymove: 1},
          "casia2")
    (root / "CASIA 2 Groundtruth" / f"{copymove}_gt.png").rename(root / "elsewhere.png")
    with pytest.warns(UserWarning, match="1 spliced images have no mask"):
        samples = load_dataset(f"casia2:{root}")
    assert next(s for s in samples if s.name == copymove).mask_path is None
    (tmp_path / "nogt" / "Au").mkdir(parents=True)
    (tmp_path / "nogt" / "Tp").mkdir()
    with pytest.raises(FileNotFoundError, match="ground-truth folder"):
        load_dataset(f"casia2:{tmp_path / 'nogt'}")


def test_folder_manifest_and_errors(tmp_path):
    root = tmp_path / "bench"
    photo(root / "images" / "a.png", 0)
    photo(root / "images" / "b.png", 1)
    gray_mask(root / "masks" / "a.png", inside=255, outside=0)
    gray_mask(root / "masks" / "b.png", inside=0, outside=0)
    check(load_dataset(f"folder:{root}"), {"a": 1, "b": 0}, "folder")  # labels from the masks
    lines = [{"image": "images/b.png", "label": 0}, {"image": "images/a.png", "mask": "masks/a.png", "label": 1,
                                                     "name": "first"}]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples = load_dataset(f"folder:{root}")
    assert [s.name for s in samples] == ["b", "first"]  # manifest order and names
    check(samples, {"b": 0, "first": 1}, "folder")
    (root / "manifest.jsonl").write_text('{"image": "images/a.png"}\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:1: bad line"):
        load_dataset(f"folder:{root}")
    (root / "manifest.jsonl").write_text('{"image": "images/zz.png", "label": 1}\n')
    with pytest.raises(FileNotFoundError, match=r"manifest.jsonl:1: image .*zz.png does not exist"):
        load_dataset(f"folder:{root}")


def test_specs_and_missing_roots(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'nist16'.*columbia"):
        load_dataset(f"nist16:{tmp_path}")
    with pytest.raises(ValueError, match="KIND:PATH"):
        load_dataset(str(tmp_path))
    for kind in LOADERS:
        with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'absent'}"):
            load_dataset(f"{kind}:{tmp_path / 'absent'}")
        (tmp_path / f"empty_{kind}").mkdir()
        with pytest.raises(FileNotFoundError, match=f"empty_{kind}"):
            load_dataset(f"{kind}:{tmp_path / f'empty_{kind}'}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an authentic sample needs no mask file and warns nothing
        assert not load_mask(Sample(tmp_path / "x.png", None, 0, "x"), (3, 4)).any()
