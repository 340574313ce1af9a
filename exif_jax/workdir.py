"""A training workdir, as `exif-jax train` and `exif-jax import-official` leave it: WORKDIR/config.json and
orbax checkpoints in WORKDIR/ckpt/<step>. The one loader eval, export and the benchmarks use; WORKDIR may be a
local path, gs://… or s3://… (exif_jax.storage). Checkpoints and packaged models are verified against their
digests (exif_jax.digests) before their parameters are used."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import ml_collections

from exif_jax import digests, storage
from exif_jax.config import upgrade


def locate(path: str) -> tuple[str, str]:
    """(config.json, checkpoint directory) of a workdir given as WORKDIR or WORKDIR/ckpt."""
    p = storage.normalize(path)
    for config_json, ckpt in ((storage.join(p, "config.json"), storage.join(p, "ckpt")),
                              (storage.join(storage.dirname(p), "config.json"), p)):
        if storage.isfile(config_json) and storage.isdir(ckpt):
            return config_json, ckpt
    raise FileNotFoundError(f"{path}: not a training workdir (expected config.json and a ckpt/ folder, as "
                            "`exif-jax train` writes them)")


def read_config(path: str) -> ml_collections.ConfigDict:
    """The workdir's (or packaged model's) config, upgraded to the current schema (what was trained)."""
    if is_packaged(path):
        return _packaged_config(path)
    config_json, _ = locate(path)
    try:
        raw = json.loads(storage.read_text(config_json))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_json}: not valid JSON ({e})") from e
    return upgrade(raw, source=config_json)


def for_inference(config: ml_collections.ConfigDict, float32: bool = False) -> ml_collections.ConfigDict:
    """`config` ready to run here: f32 compute if asked, and model.attention "cudnn" read as "xla" (the same
    math) where cuDNN's fused attention cannot run (no CUDA GPU, or f32 compute)."""
    import jax

    if float32:
        config.model.dtype = "float32"
    if config.model.attention == "cudnn" and (float32 or jax.devices()[0].platform != "gpu"):
        config.model.attention = "xla"
    return config


def load_model(path: str, step: int | None = None, *,
               float32: bool = False) -> tuple[Any, ml_collections.ConfigDict, int]:
    """(model in eval mode, config, step) from a workdir's newest checkpoint (or `step`), or from a packaged
    model (its one step); float32 computes in f32 whatever the run trained with (parameters as stored)."""
    from exif_jax import checkpoint

    if is_packaged(path):
        meta = packaged_meta(path)
        if step is not None and step != meta.get("step"):
            raise ValueError(f"--step {step}: {path} is a packaged model ({meta['name']!r}) holding one step "
                             f"({meta.get('step')}); drop --step")
        model, config = load_packaged(path, float32=float32)
        return model, config, int(meta.get("step", 0))
    config = for_inference(read_config(path), float32)
    _, ckpt = locate(path)
    model, got = checkpoint.load_model(config, ckpt, step)
    model.eval()
    return model, config, got


# ----------------------------------------------------------------------------- packaged models
# A packaged model is a directory: config.json (tokenizer.model relative to it), params.msgpack (the towers'
# parameters, optionally in bfloat16), the tokenizer file, and model.json (its name and where it came from).
# The bundled default model (exif_jax/assets/default_model) is one; `python -m exif_jax.experiment package`
# makes one from a training workdir. model.json's "params_crc32c" is the digest of params.msgpack as written;
# loading checks the bytes it read against it.

PARAMS_FILE, MODEL_JSON, PARAMS_DIGEST = "params.msgpack", "model.json", "params_crc32c"
DEFAULT_MODEL = Path(__file__).parent / "assets" / "default_model"


def is_packaged(path: str | Path) -> bool:
    """True for a packaged model directory (config.json + params.msgpack)."""
    p = str(path)
    return storage.isfile(storage.join(p, "config.json")) and storage.isfile(storage.join(p, PARAMS_FILE))


def packaged_meta(path: str | Path) -> dict[str, Any]:
    """A packaged model's model.json (name, source run, step, stored dtype, ...); {} when it has none."""
    meta = storage.join(str(path), MODEL_JSON)
    if not storage.isfile(meta):
        return {}
    try:
        return json.loads(storage.read_text(meta))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: not valid JSON ({e})") from e


def model_name(path: str | Path) -> str:
    """The name a packaged model carries (model.json), else the workdir's path."""
    return str(packaged_meta(path).get("name", path))


def default_source(checkpoint: str | None, baseline: str | None = None, *, command: str = "exif-jax") -> str | None:
    """`checkpoint`, or the bundled default model when neither --checkpoint nor --baseline is given (said on
    stderr, so nobody mistakes its maps for the paper's model)."""
    if checkpoint is not None or baseline is not None:
        return checkpoint
    if not is_packaged(DEFAULT_MODEL):
        raise FileNotFoundError(f"no --checkpoint and the bundled default model is missing ({DEFAULT_MODEL}): "
                                "give --checkpoint WORKDIR or --baseline")
    print(f"{command}: no --checkpoint: using the bundled default model {model_name(DEFAULT_MODEL)!r} "
          f"({DEFAULT_MODEL}); see the README's 'Default model'", file=sys.stderr)
    return str(DEFAULT_MODEL)


def _packaged_config(path: str | Path) -> ml_collections.ConfigDict:
    path = str(path)
    config_json = storage.join(path, "config.json")
    try:
        raw = json.loads(storage.read_text(config_json))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_json}: not valid JSON ({e})") from e
    config = upgrade(raw, source=config_json)
    tok = config.tokenizer.model
    if tok and not storage.is_remote(tok) and not Path(tok).is_absolute():
        config.tokenizer.model = storage.join(path, tok)
    return config


def read_params(path: str | Path) -> bytes:
    """A packaged model's params.msgpack, its bytes checked against model.json's digest (ValueError naming the
    file if they differ; a package made before digests is loaded with a warning)."""
    params_path = storage.join(str(path), PARAMS_FILE)
    data = storage.read_bytes(params_path)
    expected = packaged_meta(path).get(PARAMS_DIGEST)
    if expected is None:
        print(f"warning: {params_path}: no {PARAMS_DIGEST} in {MODEL_JSON} (packaged before models carried a "
              "digest): not verified", file=sys.stderr)
    elif digests.crc32c(data) != expected:
        raise ValueError(f"{params_path}: corrupt: crc32c expected {expected} ({MODEL_JSON}), found "
                         f"{digests.crc32c(data)} ({len(data)} bytes); re-copy or re-package the model")
    return data


def load_packaged(path: str | Path, *, float32: bool = False) -> tuple[Any, ml_collections.ConfigDict]:
    """(model in eval mode, config) of a packaged model; parameters come back in the model's param dtype."""
    import jax
    import numpy as np
    from flax import nnx, serialization

    from exif_jax.models import towers
    from exif_jax.tokenizer import vocab_size_of

    path = str(path)
    params_path = storage.join(path, PARAMS_FILE)
    config = for_inference(_packaged_config(path), float32)
    model = nnx.eval_shape(lambda: towers.create_model(config, vocab_size_of(config), nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    stored = serialization.msgpack_restore(read_params(path))
    want = {"params": params.to_pure_dict(), "rest": rest.to_pure_dict()}
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    flat_got = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
    if set(flat_want) != set(flat_got):
        missing, extra = sorted(set(flat_want) - set(flat_got)), sorted(set(flat_got) - set(flat_want))
        raise ValueError(f"{params_path} does not fit its config.json: missing {missing[:3]}, extra {extra[:3]}")
    for k, v in flat_want.items():
        if tuple(flat_got[k].shape) != tuple(v.shape):
            raise ValueError(f"{params_path}: {jax.tree_util.keystr(k)} has shape {flat_got[k].shape}, "
                             f"config.json builds {v.shape}")
    cast = jax.tree.map(lambda w, a: np.asarray(a, dtype=w.dtype), want, stored)
    params.replace_by_pure_dict(cast["params"])
    rest.replace_by_pure_dict(cast["rest"])
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model, config


def package(run: str, out: str, *, name: str, dtype: str = "bfloat16", step: int | None = None,
            about: dict[str, Any] | None = None) -> Path:
    """Write a packaged model from a training workdir's checkpoint; returns its directory."""
    import shutil

    import jax
    import ml_dtypes
    import numpy as np
    from flax import nnx, serialization

    model, config, got_step = load_model(run, step)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    to = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]

    def stored(a: Any) -> np.ndarray:
        a = np.asarray(a)
        return a.astype(to) if np.issubdtype(a.dtype, np.floating) else a

    state = {"params": jax.tree.map(stored, params.to_pure_dict()),
             "rest": jax.tree.map(np.asarray, rest.to_pure_dict())}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params_bytes = serialization.msgpack_serialize(state)
    (out_dir / PARAMS_FILE).write_bytes(params_bytes)
    tok = config.tokenizer.model
    if tok:
        shutil.copyfile(tok, out_dir / Path(tok).name)
        config.tokenizer.model = Path(tok).name  # relative to the package
    config.data.train_dir = ""
    (out_dir / "config.json").write_text(config.to_json(indent=2))
    meta = {"name": name, "source_run": str(run), "step": got_step, "param_dtype_stored": dtype, **(about or {}),
            PARAMS_DIGEST: digests.crc32c(params_bytes)}
    (out_dir / MODEL_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir
