"""SentencePiece tokenizer: fixed ids, fixed length, truncation counting, pickling, determinism, bundled model."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from exif_jax import exif
from exif_jax.cli import main as cli
from exif_jax.tokenizer import BUNDLED_MODEL, Tokenizer, train_tokenizer

PHOTOS = Path(__file__).resolve().parents[1] / "exif_jax" / "assets" / "photos"
TAGS = ("Make", "Model", "Exposure Time", "F-Number", "ISO Speed Ratings", "Focal Length")


def synthetic_texts(n: int = 300, seed: int = 0) -> list[str]:
    """EXIF-like texts with numbers drawn at random (the shape render_text produces)."""
    rng = random.Random(seed)
    cams = [("Canon", "Canon EOS 20D"), ("NIKON CORPORATION", "NIKON D70"), ("Apple", "iPhone 4"),
            ("SONY", "DSC-W55"), ("FUJIFILM", "FinePix S5600")]
    out = []
    for _ in range(n):
        make, model = rng.choice(cams)
        out.append(f"Make: {make}, Model: {model}, Exposure Time: 1/{rng.choice([30, 60, 125, 250, 500])} sec, "
                   f"F-Number: f/{rng.randint(14, 110) / 10}, ISO Speed Ratings: {rng.choice([100, 200, 400, 800])}, "
                   f"Focal Length: {rng.randint(4, 300)} mm")
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return train_tokenizer(synthetic_texts(), str(tmp_path_factory.mktemp("sp") / "m"), 300, tag_names=TAGS)


def test_ids_and_pieces(model):
    tok = Tokenizer(model, max_len=64)
    sp = tok.sp
    assert (tok.pad_id, tok.eos_id, sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert (sp.id_to_piece(0), sp.id_to_piece(1)) == ("<pad>", "</s>")
    pieces = sp.encode("Make: Canon, Exposure Time: 1/250 sec", out_type=str)
    assert pieces[0] == "▁Make:" and ",▁Exposure▁Time:" in pieces  # tag labels are one token each
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "5", "0"]  # digits split


def test_encode_fixed_length_pad_eos_and_decode(model):
    tok = Tokenizer(model, max_len=64)
    text = "Make: Canon, Model: Canon EOS 20D, F-Number: f/5.6"
    row = tok.encode(text)
    n = len(tok.sp.encode(text))
    assert row.dtype == np.int32 and row.shape == (64,)
    assert row[n] == tok.eos_id and (row[:n] > 2).all() and (row[n + 1:] == tok.pad_id).all()
    assert tok.decode(row) == text
    assert tok.length(text) == n + 1


def test_truncation_keeps_eos_and_is_counted(model):
    tok = Tokenizer(model, max_len=16)
    texts = synthetic_texts(5, seed=1) + ["Make: Canon", ""]
    arr, n_trunc = tok.encode_batch(texts)
    assert arr.shape == (7, 16) and arr.dtype == np.int32
    assert n_trunc == sum(tok.length(t) > 16 for t in texts) == 5
    for t, row in zip(texts, arr):
        np.testing.assert_array_equal(row, tok.encode(t))
        assert (row == tok.eos_id).sum() == 1
    assert (arr[:5, -1] == tok.eos_id).all()
    assert tok.decode(arr[5]) == "Make: Canon" and arr[6, 0] == tok.eos_id and tok.decode(arr[6]) == ""
    empty, k = tok.encode_batch([])
    assert empty.shape == (0, 16) and k == 0


def test_pickle_round_trip(model):
    tok = Tokenizer(model, max_len=32)
    tok.encode("Make: Canon")  # loads the processor
    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2._sp is None and tok2.max_len == 32
    for t in synthetic_texts(10, seed=2):
        np.testing.assert_array_equal(tok2.encode(t), tok.encode(t))


def test_training_is_deterministic(tmp_path, model):
    texts = synthetic_texts()
    again = train_tokenizer(list(reversed(texts)), str(tmp_path / "again"), 300, tag_names=TAGS)
    assert Path(again).read_bytes() == Path(model).read_bytes()
    other = train_tokenizer(texts[:50], str(tmp_path / "other"), 300, tag_names=TAGS)
    assert Path(other).read_bytes() != Path(model).read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(str(tmp_path / "nope.model"))
    with pytest.raises(ValueError, match="no non-empty texts"):
        train_tokenizer(["", "  "], str(tmp_path / "x"), 100, tag_names=TAGS)


def test_bundled_model_on_bundled_photos():
    assert BUNDLED_MODEL.is_file(), "exif_jax/assets/tokenizer/exif_sp.model is missing"
    tok = Tokenizer()
    assert tok.vocab_size > 300
    texts = [exif.render_text(exif.read_tags(str(p))) for p in sorted(PHOTOS.glob("*.jpg"))]
    for t in texts:
        ids = tok.sp.encode(t)
        assert tok.sp.unk_id() not in ids
        assert tok.sp.decode(ids) == t
    for name in exif.DEFAULT_TAGS:  # every default tag label is a single piece
        assert tok.sp.piece_to_id(",▁" + name.replace(" ", "▁") + ":") != tok.sp.unk_id()


def test_cli_train_tokenizer(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(synthetic_texts(100)) + "\n")
    assert cli(["train-tokenizer", "--texts", str(texts), "-o", str(tmp_path / "t"), "--vocab-size", "200"]) == 0
    tok = Tokenizer(str(tmp_path / "t" / "exif_sp.model"))  # OUT/exif_sp.model, named like the bundled one
    assert tok.decode(tok.encode("Make: SONY")) == "Make: SONY"
    assert cli(["train-tokenizer", "--images", str(PHOTOS), "--out", str(tmp_path / "p"), "--vocab-size", "300"]) == 0
    tok = Tokenizer(str(tmp_path / "p" / "exif_sp.model"))
    t = exif.render_text(exif.read_tags(str(PHOTOS / "Nikon_D70.jpg")))
    assert tok.decode(tok.encode(t)) == t or tok.length(t) > 64


def test_cli_train_tokenizer_from_built_data(tmp_path):
    from exif_jax.data import build
    out = tmp_path / "data"
    build.build_dataset(build.items_from_paths(build.list_images(str(PHOTOS))), str(out),
                        build.Settings(tag_order=tuple(exif.DEFAULT_TAGS)), workers=1, progress=False)
    assert cli(["train-tokenizer", "--data", str(out), "--out", str(tmp_path / "d"), "--vocab-size", "400",
                "--config", str(PHOTOS.parents[2] / "configs" / "tiny.py")]) == 0
    tok = Tokenizer(str(tmp_path / "d" / "exif_sp.model"), max_len=256)
    for rec in build.read_records(str(out)):
        assert tok.decode(tok.encode(rec["text"])) == rec["text"]


def test_long_texts_encode_only_what_a_row_keeps():
    """encode() tokenizes only a prefix of long texts (cut before a tag label); rows equal encoding it all."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
    paths = sorted(PHOTOS.glob("*.jpg")) + sorted(shared.glob("*.jpg"))
    texts = [exif.render_text(exif.read_tags(str(p))) for p in paths]
    texts += ["x" * 3000, "a " * 2000, "Make: " + "1234567890" * 300 + " end", "",  # nowhere to cut; empty
              "Make: A, Model: B  , Flash: x" * 40, "Make: Ltd., Model: Ltd.,, Model: q" * 60]  # odd spacing
    for max_len in (2, 8, 16, 64, 128, 512):
        tok = Tokenizer(max_len=max_len)
        for t in texts:
            whole = np.full((max_len,), tok.pad_id, np.int32)
            ids = tok.sp.encode(t)[: max_len - 1] + [tok.eos_id]
            whole[: len(ids)] = ids
            np.testing.assert_array_equal(tok.encode(t), whole, err_msg=f"max_len {max_len}: {t[:60]}")
    assert ", Model:" in Tokenizer(max_len=64)._labels  # the bundled model takes the short cut

