"""Import the paper's released PyTorch weights (hellomuffin/exif-as-language) as an exif-jax checkpoint.

The released file is the official train.py's checkpoint: {"epoch", "model": state dict, "optimizer",
"lr_sched"}. Its state dict is model_wrapper.EXIFNet's:
  model.visual.*        torchvision ResNet-50, fc = Linear(2048, 768)     -> image/... (models/resnet.py)
  model.transformer.*   transformers DistilBertModel (distilbert-base)   -> text/...  (models/distilbert.py)
  model.logit_scale     CLIP's; the trainer's fixed scale is its exp()   -> model.logit_scale_init
  model.positional_embedding, model.token_embedding.weight, model.ln_final.*, model.text_projection:
                        the unused rest of the OpenAI CLIP shell EXIFNet wraps; skipped
  sink_temp             an unused parameter of EXIFNet; skipped
  *.num_batches_tracked, model.transformer.embeddings.position_ids: torch bookkeeping; skipped
Every other tensor must map onto the model configs/official.py describes, shape for shape, and every model
variable must come from the file; otherwise nothing is written and the error lists what did not match.
BatchNorm running statistics are copied as torch keeps them (running_var is what torch divides by at
inference). The output is what `exif-jax train` leaves in a workdir: OUT/config.json and an orbax checkpoint
OUT/ckpt/0 (model item only), plus OUT/vocab.txt (the tokenizer) and OUT/import.json (provenance).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from exif_jax import checkpoint, cli_args
from exif_jax.config import load_config
from exif_jax.export.layout import to_flax, torch_key, torch_shape
from exif_jax.models import towers
from exif_jax.wordpiece import WordPiece

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "official.py"
SKIPPED_KEYS = frozenset({
    "sink_temp", "model.positional_embedding", "model.token_embedding.weight", "model.ln_final.weight",
    "model.ln_final.bias", "model.text_projection", "model.logit_scale",
    "model.transformer.embeddings.position_ids",  # a saved buffer in older transformers releases
})
LOGIT_SCALE_KEY = "model.logit_scale"


class OfficialCheckpointError(ValueError):
    """The file is not (or does not fully match) the paper's released checkpoint."""


def _skipped(key: str) -> bool:
    return key in SKIPPED_KEYS or (key.startswith("model.visual.") and key.endswith(".num_batches_tracked"))


def read_state_dict(weights: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({key: f32 array} of the official file, {"epoch": ...}); only `torch.load(weights_only=True)` is used."""
    try:  # lazy: torch is the [torch] extra, and only reading the paper's file needs it
        import torch
    except ImportError as e:
        raise OfficialCheckpointError("reading PyTorch weights needs torch: pip install 'exif-jax[torch]'") from e
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for what it refuses
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise OfficialCheckpointError(
            f"{path}: not a weights-only PyTorch file; torch.load(weights_only=True) refused it "
            f"({type(e).__name__}: {reason}). Arbitrary pickles are never loaded.") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        sd, meta = obj["model"], {"epoch": obj.get("epoch")}
    elif isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith("model.visual.") for k in obj):
        sd, meta = obj, {"epoch": None}  # a bare EXIFNet state dict
    else:
        found = sorted(map(str, obj))[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise OfficialCheckpointError(f"{path}: no EXIFNet state dict: expected a dict with a 'model' state dict "
                                      f"(the official train.py's checkpoint), found {found}")
    out, not_tensors = {}, []
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            not_tensors.append(str(k))
        elif _skipped(str(k)) and k != LOGIT_SCALE_KEY:
            continue
        elif v.is_floating_point():
            out[str(k)] = v.detach().to(torch.float32).numpy()
        else:
            out[str(k)] = v.detach().numpy()
    if not_tensors:
        raise OfficialCheckpointError(f"{path}: state-dict entries that are not tensors: {_listing(not_tensors)}")
    return out, meta


def _listing(items: list[str], limit: int = 25) -> str:
    items = sorted(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def map_state(sd: Mapping[str, np.ndarray], abstract: Any, *, source: str = "checkpoint") -> dict[tuple, np.ndarray]:
    """{our path: array} for every variable of `abstract` (nnx State of the model), or one error listing
    every missing key, unexpected key, shape mismatch and non-finite tensor."""
    wanted = {tuple(p): v for p, v in nnx.to_flat_state(abstract)}
    out, missing, bad_shape, bad_dtype, non_finite, used = {}, [], [], [], [], set()
    for path, var in wanted.items():
        if path == ("t",):  # a learned logit scale starts at CLIP's
            key, arr = LOGIT_SCALE_KEY, sd.get(LOGIT_SCALE_KEY)
            arr = None if arr is None else np.reshape(arr, (1,))
        else:
            try:
                key = torch_key(path)
            except KeyError as e:
                missing.append(str(e.args[0]))
                continue
            arr = sd.get(key)
            arr = None if arr is None else to_flax(path, arr)
        if arr is None:
            missing.append(key)
            continue
        used.add(key)
        shape = tuple(var.shape) if hasattr(var, "shape") else tuple(var[...].shape)
        if not np.issubdtype(arr.dtype, np.floating):
            bad_dtype.append(f"{key} ({arr.dtype})")
        elif arr.shape != shape:
            bad_shape.append(f"{key}: file {torch_shape(path, arr.shape)}, model {torch_shape(path, shape)}")
        elif not np.all(np.isfinite(arr)):
            non_finite.append(key)
        else:
            out[path] = np.ascontiguousarray(arr, np.float32)
    unexpected = [k for k in sd if k not in used and not _skipped(k)]
    problems = [(f"{len(unexpected)} unexpected key(s)", unexpected), (f"{len(missing)} missing key(s)", missing),
                (f"{len(bad_shape)} shape mismatch(es) (torch layout)", bad_shape),
                (f"{len(bad_dtype)} non-float tensor(s)", bad_dtype), (f"{len(non_finite)} tensor(s) with NaN/inf",
                                                                      non_finite)]
    problems = [(what, items) for what, items in problems if items]
    if problems:
        raise OfficialCheckpointError(f"{source} does not match the official EXIFNet layout; nothing written.\n"
                                      + "\n".join(f"  {what}: {_listing(items)}" for what, items in problems))
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_official(weights: str | os.PathLike, vocab: str | os.PathLike, out: str | os.PathLike, *,
                    config_path: str | os.PathLike | None = None) -> str:
    """Convert the official checkpoint into OUT (config.json, ckpt/0, vocab.txt, import.json); returns OUT.
    OUT must not exist; it appears only when everything matched and was written."""
    weights, vocab, out = os.fspath(weights), os.fspath(vocab), Path(out).resolve()
    if out.exists():
        raise FileExistsError(f"{out}: already exists; give a new --out directory")
    config_path = os.fspath(config_path or DEFAULT_CONFIG)
    config = load_config(config_path)
    tok = WordPiece(vocab, max_len=int(config.tokenizer.max_len))
    sd, meta = read_state_dict(weights)

    # The file decides the vocabulary size and the fixed logit scale.
    emb = sd.get("model.transformer.embeddings.word_embeddings.weight")
    if emb is not None and emb.shape[0] != tok.vocab_size:
        raise OfficialCheckpointError(f"{vocab}: {tok.vocab_size} pieces, but {weights} embeds {emb.shape[0]} "
                                      "(model.transformer.embeddings.word_embeddings.weight): not its vocab.txt")
    config.model.text.vocab_size = tok.vocab_size
    config.model.text.pad_id = tok.pad_id
    config.model.text.eos_id = tok.sep_id
    config.tokenizer.model = str(out / "vocab.txt")
    scale = sd.get(LOGIT_SCALE_KEY)
    if scale is not None:
        if scale.size != 1 or not np.isfinite(scale).all():
            raise OfficialCheckpointError(f"{weights}: {LOGIT_SCALE_KEY} must be one finite number, got {scale!r}")
        config.model.logit_scale_init = float(math.exp(float(scale.reshape(()))))
        config.model.logit_scale_max = max(float(config.model.logit_scale_max), config.model.logit_scale_init)

    model = nnx.eval_shape(lambda: towers.create_model(config, tok.vocab_size, nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    arrays = map_state(sd, abstract, source=weights)
    del sd
    flat = [(p, v.replace(jnp.asarray(arrays[tuple(p)]))) for p, v in nnx.to_flat_state(abstract)]
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    _, params, rest = nnx.split(model, nnx.Param, ...)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "config.json").write_text(config.to_json(indent=2))
        shutil.copyfile(vocab, tmp / "vocab.txt")
        mngr = checkpoint.make_manager(str(tmp / "ckpt"), keep=1, async_save=False)
        mngr.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave({"params": params, "rest": rest})))
        mngr.wait_until_finished()
        mngr.close()
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model)))
        (tmp / "import.json").write_text(json.dumps(dict(
            source=os.path.abspath(weights), sha256=_sha256(weights), epoch=meta["epoch"],
            vocab=os.path.abspath(vocab), vocab_size=tok.vocab_size, logit_scale=config.model.logit_scale_init,
            tensors=len(arrays), values=n, config=os.path.abspath(config_path)), indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax import-official`."""
    parser.add_argument("--weights", required=True, metavar="FILE", help="the official checkpoint (train.py's .pth)")
    parser.add_argument("--vocab", required=True, metavar="FILE", help="distilbert-base-uncased's vocab.txt")
    cli_args.add_out(parser, "a new folder (it must not exist): config.json, ckpt/0, vocab.txt, import.json; a "
                             "workdir that localize, eval-localize, probe, retrieval and export read as --checkpoint")
    parser.add_argument("--config", metavar="FILE", help=f"model config (default: {DEFAULT_CONFIG})")


def cli_main(args: argparse.Namespace) -> int:
    """Run `import_official`; a bad file is reported by name (exit 2)."""
    try:
        out = import_official(args.weights, args.vocab, args.out, config_path=args.config)
    except (OfficialCheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"exif-jax import-official: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (config.json, ckpt/0, vocab.txt); try: exif-jax localize PHOTO --checkpoint {out} -o OUT")
    return 0
