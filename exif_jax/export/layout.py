"""Flax <-> PyTorch tensor layout and names: the one place the exporters (hf, hf_towers, timm) and the importer
of the paper's weights (official) take them from. Imports no other exif_jax.export module.

Tensor rule (by the variable's last path element and its rank):
  kernel, rank 4   conv   flax HWIO [kh, kw, in, out]   <->  torch OIHW [out, in, kh, kw]
  kernel, rank 2   Linear flax [in, out]                 <->  torch [out, in]
  anything else    the same array (biases, LayerNorm/BatchNorm scales and statistics, embeddings)
Names: our variable path ('image', 'layer1', 0, 'conv1', 'kernel') <-> the paper's EXIFNet state-dict key
('model.visual.layer1.0.conv1.weight'); with the prefix cut, torchvision's ResNet names (= timm's) and
transformers' DistilBertModel names.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from flax import nnx

# Axis permutations flax -> torch by kernel rank; torch -> flax is their inverse.
_TO_TORCH = {4: (3, 2, 0, 1), 2: (1, 0)}
_TO_FLAX = {rank: tuple(int(i) for i in np.argsort(p)) for rank, p in _TO_TORCH.items()}

# The paper's EXIFNet state dict: tower prefix and our leaf name -> torch's.
TOWER_PREFIX = {"image": "model.visual.", "text": "model.transformer."}
LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}


class NotExportable(ValueError):
    """A config option with no equivalent in the target library; the message names the option."""


def _is_kernel(path: tuple) -> bool:
    return str(path[-1]) == "kernel"


def to_torch(path: tuple, x: np.ndarray) -> np.ndarray:
    """Our variable at `path` in torch's layout, float32 contiguous: conv HWIO -> OIHW, Linear [in,out] -> [out,in]."""
    x = np.asarray(x)
    if _is_kernel(path):
        if x.ndim not in _TO_TORCH:
            raise NotExportable(f"{'/'.join(map(str, path))}: a rank-{x.ndim} kernel has no torch layout")
        x = x.transpose(_TO_TORCH[x.ndim])
    return np.ascontiguousarray(x, np.float32)


def to_flax(path: tuple, t: np.ndarray) -> np.ndarray:
    """A torch tensor (as numpy) in the layout of our variable at `path`; kernels of other ranks unchanged
    (the caller's shape check names them)."""
    if _is_kernel(path) and t.ndim in _TO_FLAX:
        return t.transpose(_TO_FLAX[t.ndim])
    return t


def torch_shape(path: tuple, shape: tuple) -> tuple:
    """Our shape written the way torch stores it (so both sides of a message read alike)."""
    if _is_kernel(path) and len(shape) in _TO_TORCH:
        return tuple(shape[i] for i in _TO_TORCH[len(shape)])
    return tuple(shape)


def torch_key(path: tuple) -> str:
    """Our variable path ('image', 'layer1', 0, 'conv1', 'kernel') -> the official EXIFNet state-dict key."""
    if path[0] not in TOWER_PREFIX or str(path[-1]) not in LEAF_NAMES:
        raise KeyError(f"{'/'.join(map(str, path))}: no counterpart in the official checkpoint")
    return TOWER_PREFIX[path[0]] + ".".join(str(p) for p in path[1:-1]) + "." + LEAF_NAMES[str(path[-1])]


# ----------------------------------------------------------------------------- reading the model

def flat_params(model: Any) -> dict[str, np.ndarray]:
    """Every nnx.Param of the model as float32 NumPy, keyed by its '/'-joined path (e.g. 'image/pos_embedding')."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out["/".join(str(p) for p in path)] = np.asarray(var[...], dtype=np.float32)
    return out


def flat_variables(module: Any, prefix: str) -> dict[tuple, np.ndarray]:
    """Every variable (parameters and BatchNorm statistics) of a tower, keyed by its full path."""
    return {(prefix, *path): np.asarray(var[...], np.float32)
            for path, var in nnx.to_flat_state(nnx.state(module))}


def log_logit_scale(model: Any) -> float:
    """log of the scale the model multiplies cosines by (exp(t) clipped at logit_scale_max, or the fixed one)."""
    return float(math.log(float(model.logit_scale())))


def tower_state_dict(model: Any, tower: str) -> dict[str, np.ndarray]:
    """One tower under the official names without their EXIFNet prefix, torch layouts: for the ResNet
    torchvision's (= timm's) names, for DistilBERT transformers' DistilBertModel names."""
    prefix = TOWER_PREFIX[tower]
    return {torch_key(path).removeprefix(prefix): to_torch(path, x)
            for path, x in flat_variables(getattr(model, tower), tower).items()}


def torchvision_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The ResNet tower under torchvision's (= timm's) state-dict names, torch layouts, BN bookkeeping included."""
    out = tower_state_dict(model, "image")
    if "fc.weight" in out and "fc.bias" not in out:  # head_bias=False: an exact zero bias
        out["fc.bias"] = np.zeros(out["fc.weight"].shape[0], np.float32)
    for key in [k for k in out if k.endswith(".running_mean")]:  # torch's BatchNorm step counter
        out[key.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
    return out


# ----------------------------------------------------------------------------- writing

def write_safetensors(state: dict, path: str) -> None:
    """NumPy arrays -> a safetensors file torch loads (metadata format "pt"), readable like the rest of the export."""
    # Lazy: safetensors is the [torch] extra; only writing an export needs it.
    from safetensors.numpy import save_file

    save_file(state, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates it owner-only
    record_digest(path)


def record_digest(path: str) -> None:
    """Add the file's CRC-32C to digests.json beside it (what the parity check verifies before loading)."""
    from exif_jax import digests

    digests.record(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
