"""SentencePiece tokenizer for EXIF text: training, fixed-length encoding, and the `train-tokenizer` command."""
from __future__ import annotations

import argparse
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from exif_jax import cli_args, exif, storage
from exif_jax.config import load_config
from exif_jax.data.reader import read_records
from exif_jax.wordpiece import WordPiece

BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "tokenizer" / "exif_sp.model"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def tag_symbols(tag_names: Iterable[str]) -> list[str]:
    """Pieces that make each tag label one token: `"▁Exposure▁Time:"` and, after a comma, `",▁Exposure▁Time:"`."""
    labels = ["▁" + name.replace(" ", "▁") + ":" for name in tag_names]
    return labels + ["," + lab for lab in labels]


def train_tokenizer(texts: Iterable[str], out_prefix: str, vocab_size: int = 1000, *,
                    tag_names: Sequence[str] | None = None) -> str:
    """Train a BPE SentencePiece model on EXIF texts; returns the `.model` path."""
    if tag_names is None:
        tag_names = exif.DEFAULT_TAGS
    # Sorted and de-duplicated: the model depends only on the set of texts.
    uniq = sorted({t.replace("\n", " ").strip() for t in texts} - {""})
    if not uniq:
        raise ValueError("train_tokenizer: no non-empty texts to train on")
    out = Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # Through an iterator and a writer, not files: the model proto then records no paths, so the
    # same texts give byte-identical models wherever they are trained.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(uniq), model_writer=model, vocab_size=vocab_size,
        # BPE, not unigram: on a few hundred texts the unigram trainer stops near 280 pieces and
        # spells even common words letter by letter (mean 191 tokens on the shared photos vs 109).
        model_type="bpe",
        # A small corpus may hold fewer distinct pieces than the vocab size asks for.
        hard_vocab_limit=False,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        # Digits one by one: 1/250 and 1/200 share structure, and an exposure, focal length or
        # date never seen in training still tokenizes into known pieces instead of rare atoms.
        split_digits=True,
        # Every text repeats the same tag labels; one id per label and its leading comma
        # (",▁Exposure▁Time:") saves 3-4 tokens per tag and marks which field a value belongs to.
        user_defined_symbols=tag_symbols(tag_names),
        # Keep the text exactly as rendered (camera strings are case/space sensitive); decode is
        # then the inverse of encode for any text without unknown characters. Characters never
        # seen in training become unk rather than byte pieces: EXIF is nearly all ASCII, and 256
        # byte ids would be a quarter of a 1000-piece vocabulary.
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, byte_fallback=False,
        # Determinism: no sentence sampling or shuffling, one thread.
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2)
    out_model = Path(str(out) + ".model")
    out_model.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    with open(str(out) + ".vocab", "w", encoding="utf-8") as f:  # what spm writes: piece<TAB>score
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n")
    return str(out) + ".model"


class Tokenizer:
    """Fixed-length SentencePiece encoder: ids + eos, right-padded with pad; picklable."""

    def __init__(self, model_path: str | None = None, max_len: int = 64):
        self.model_path = str(model_path) if model_path else str(BUNDLED_MODEL)
        if not storage.isfile(self.model_path):
            raise FileNotFoundError(f"tokenizer model not found: {self.model_path}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (one token + eos), got {max_len}")
        self.max_len = int(max_len)
        self._sp: spm.SentencePieceProcessor | None = None
        self._cut_labels: tuple[str, ...] | None = None
        sp = self.sp
        if sp.pad_id() != PAD_ID or sp.eos_id() != EOS_ID:
            raise ValueError(f"{self.model_path}: expected pad={PAD_ID} eos={EOS_ID}, "
                             f"got pad={sp.pad_id()} eos={sp.eos_id()}")

    @property
    def sp(self) -> spm.SentencePieceProcessor:
        """The processor, loaded on first use (also after unpickling in a grain worker)."""
        if self._sp is None:
            # model_proto: the model may live in object storage (gs://, s3://) as well as on disk.
            self._sp = spm.SentencePieceProcessor(model_proto=storage.read_bytes(self.model_path))
        return self._sp

    def __getstate__(self) -> dict:
        # The SWIG processor does not pickle; workers reload it from the path.
        return {"model_path": self.model_path, "max_len": self.max_len}

    def __setstate__(self, state: dict) -> None:
        self.model_path, self.max_len, self._sp = state["model_path"], state["max_len"], None
        self._cut_labels = None

    @property
    def vocab_size(self) -> int:
        """Number of pieces (ids are 0..vocab_size-1)."""
        return int(self.sp.get_piece_size())

    @property
    def pad_id(self) -> int:
        """Id that fills a row after eos (0)."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """Id that ends every encoded text (1)."""
        return EOS_ID

    def _fill(self, ids: list[int], row: np.ndarray) -> bool:
        truncated = len(ids) + 1 > self.max_len
        ids = ids[: self.max_len - 1] + [EOS_ID]
        row[: len(ids)] = ids
        return truncated

    @property
    def _labels(self) -> tuple[str, ...]:
        """Tag labels (", Model:") that are single user-defined pieces, when cutting a text right before one
        provably keeps its ids: the identity normalizer, and no user piece has a comma past its first
        character (so none can span such a cut); empty otherwise."""
        if self._cut_labels is None:
            # Lazy: the model proto schema needs protobuf, and only this check reads a model's pieces.
            from sentencepiece import sentencepiece_model_pb2 as sp_pb2

            m = sp_pb2.ModelProto()
            m.ParseFromString(self.sp.serialized_model_proto())
            user = [p.piece.replace("\u2581", " ") for p in m.pieces
                    if p.type == sp_pb2.ModelProto.SentencePiece.USER_DEFINED]
            ok = m.normalizer_spec.name == "identity" and all("," not in u[1:] for u in user)
            self._cut_labels = tuple(u for u in user if u.startswith(", ")) if ok else ()
        return self._cut_labels

    def _ids(self, text: str) -> list[int]:
        """The ids of `text`, or, when it is long, just enough of them to fill a row: EXIF texts run to
        ~120 tokens and configs keep 64, and encoding costs per character (~100 us for a 700-character
        text, a sixth of a camera-resolution crop). The text is cut right before a tag label such as
        ", Model:": a user-defined piece is matched before anything else, so the ids before it do not
        depend on what follows. Identical to encoding the whole text (tested)."""
        labels = self._labels
        need = self.max_len  # max_len - 1 ids are kept; one more says the text was truncated
        budget = 8 * need
        while labels and len(text) > budget:
            cut = text.rfind(", ", 0, budget)
            while cut > 0 and (text[cut - 1] == " " or not text.startswith(labels, cut)):
                cut = text.rfind(", ", 0, cut)
            if cut <= 0:
                break
            ids = self.sp.encode(text[:cut])
            if len(ids) >= need:
                return ids
            budget *= 2
        return self.sp.encode(text)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 [max_len]: ids, eos, then pad; a long text is cut so eos stays last."""
        row = np.full((self.max_len,), PAD_ID, np.int32)
        self._fill(self._ids(text), row)
        return row

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Texts -> (int32 [n, max_len], how many were truncated)."""
        texts = list(texts)
        out = np.full((len(texts), self.max_len), PAD_ID, np.int32)
        n_trunc = 0
        for row, ids in zip(out, self.sp.encode(texts) if texts else []):
            n_trunc += self._fill(ids, row)
        return out, n_trunc

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids -> text, stopping at the first eos and dropping pad."""
        out: list[int] = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i != PAD_ID:
                out.append(int(i))
        return self.sp.decode(out)

    def length(self, text: str) -> int:
        """Number of tokens of `text` including eos, before any truncation."""
        return len(self.sp.encode(text)) + 1


def make_tokenizer(config: Any) -> Any:
    """The text tokenizer the config names: tokenizer.kind "sentencepiece" (default) or "wordpiece" (DistilBERT)."""
    tok = config.tokenizer
    kind = tok.kind
    if kind == "wordpiece":
        return WordPiece(tok.model, max_len=int(tok.max_len), lowercase=bool(tok.lowercase))
    if kind != "sentencepiece":
        raise ValueError(f"tokenizer.kind must be 'sentencepiece' or 'wordpiece', got {kind!r}")
    return Tokenizer(tok.model or None, max_len=int(tok.max_len))


def vocab_size_of(config: Any) -> int:
    """The text tower's vocabulary size: model.text.vocab_size if set, else the configured tokenizer's."""
    return int(config.model.text.vocab_size) or make_tokenizer(config).vocab_size


# ----------------------------------------------------------------------------- CLI

def texts_from_source(*, images: str | None = None, list_file: str | None = None,
                      data: str | None = None, texts: str | None = None,
                      tag_order: Sequence[str] | None = None, max_value_len: int = 40,
                      style: str = "metadata_extractor") -> list[str]:
    """Collect EXIF texts from photos (a folder or a list file), built ArrayRecord data, or a text file."""
    if texts:
        with open(texts, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    if data:
        return [rec["text"] for rec in read_records(data)]
    # Lazy: the builder (numba) stays out of the processes that only train or evaluate.
    from exif_jax.data.build import list_images
    tag_order = tuple(tag_order or exif.DEFAULT_TAGS)
    paths = list_images(images) if images else _read_list(list_file)
    out = []
    for p in paths:
        try:
            tags = exif.read_tags(p)
        except (exif.ExifError, OSError):
            continue  # unreadable EXIF: build-data skips these photos too
        if tags:
            out.append(exif.render_text(tags, tag_order=tag_order, max_value_len=max_value_len, style=style))
    return out


def _read_list(list_file: str | None) -> list[str]:
    with open(str(list_file), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax train-tokenizer`."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of photos (recursive); texts from their EXIF")
    src.add_argument("--list", dest="list_file", metavar="FILE", help="file with one photo path per line")
    src.add_argument("--data", metavar="RECORDS",
                     help="folder of ArrayRecord shards from build-data (their `text` field)")
    src.add_argument("--texts", metavar="FILE", help="file with one EXIF text per line")
    cli_args.add_out(parser, f"{BUNDLED_MODEL.stem}.model and {BUNDLED_MODEL.stem}.vocab (train with "
                             f"--config.tokenizer.model=OUT/{BUNDLED_MODEL.stem}.model)")
    parser.add_argument("--vocab-size", type=int, default=1000, metavar="N", help="pieces in the model")
    parser.add_argument("--config", metavar="FILE",
                        help="config file: its EXIF tag set (each label one piece) and, for photos, "
                             "max_value_len and style (default: the schema's)")


def cli_main(args: argparse.Namespace) -> int:
    """Run `exif-jax train-tokenizer`."""
    tag_order, max_value_len, style = None, 40, "metadata_extractor"
    if args.config:
        cfg = load_config(args.config)
        tag_order, max_value_len, style = tuple(cfg.exif.tags), cfg.exif.max_value_len, cfg.exif.style
    texts = texts_from_source(images=args.images, list_file=args.list_file, data=args.data, texts=args.texts,
                              tag_order=tag_order, max_value_len=max_value_len, style=style)
    path = train_tokenizer(texts, os.path.join(args.out, BUNDLED_MODEL.stem), args.vocab_size, tag_names=tag_order)
    tok = Tokenizer(path)
    print(f"wrote {path} ({tok.vocab_size} pieces) from {len(texts)} texts; train with "
          f"--config.tokenizer.model={path}")
    return 0
