"""The crop embedders eval compares, built in one place for localize, eval-localize, probe and retrieval:

  learned      a checkpoint's image tower (the unit-norm embedding the contrastive loss saw)
  random-init  the same architecture with random weights: what the architecture alone gives
  noise        hand-made noise-residual statistics (baselines.noise_embedder)
  random       random features per crop (baselines.random_embedder): the chance level

All at one crop size: the checkpoint's (config.data.crop_size, what it was trained on) or, without a
checkpoint, `crop_size` (default DEFAULT_CROP_SIZE). Flags that cannot apply are errors, never ignored.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exif_jax import workdir
from exif_jax.eval import baselines
from exif_jax.eval.patches import PatchEmbedder, model_embedder, replicate, with_paper_color_bug
from exif_jax.models import towers
from exif_jax.tokenizer import vocab_size_of

KINDS = ("learned", "random-init", "noise", "random")
MODEL_KINDS = ("learned", "random-init")
DEFAULT_CROP_SIZE = 128


class Embedders(NamedTuple):
    """What make_embedders built: kind -> embedder (replicated over the devices), the DualTowers behind the
    model kinds, the checkpoint's config (None without one) and the crop size every embedder uses."""
    embedders: dict[str, PatchEmbedder]
    models: dict[str, Any]
    config: Any
    crop_size: int


def random_init_model(config: Any, vocab_size: int | None = None, seed: int = 0) -> Any:
    """A DualTower with random weights filled in from numpy (no per-initializer dispatch or compile: fast for
    big towers). Scales/variances 1, biases/means 0, kernels N(0, 1/fan_in)."""
    if vocab_size is None:
        vocab_size = vocab_size_of(config)
    abstract = nnx.eval_shape(lambda: towers.create_model(config, vocab_size, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, random_weights(state, seed))


def random_weights(state: Any, seed: int = 0) -> Any:
    """`state` (a model's nnx state, arrays or shapes) with every leaf drawn by numpy as random_init_model says."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = [str(k.key) for k in path if hasattr(k, "key")][-1]  # the last dict key (then .value)
        if name in ("scale", "var"):
            v = np.ones(x.shape)
        elif name in ("bias", "mean") or x.ndim == 0:
            v = np.zeros(x.shape)
        else:
            v = rng.normal(0, 1 / np.sqrt(max(int(np.prod(x.shape[:-1])), 1)), x.shape)
        return jnp.asarray(v, x.dtype)

    return jax.tree_util.tree_map_with_path(fill, state)


def check_sources(*, checkpoint: str | None, step: int | None = None, crop_size: int | None = None,
                  paper_color_bug: bool = False) -> None:
    """Refuse flags that cannot apply to the model source (a ValueError naming both flags)."""
    if step is not None and not checkpoint:
        raise ValueError("--step picks a step of a --checkpoint; without --checkpoint there is none to pick")
    if crop_size is not None and checkpoint:
        raise ValueError(f"--crop-size sets a baseline's crop size; --checkpoint {checkpoint} fixes its own "
                         "(the crop size it was trained on): drop --crop-size")
    if paper_color_bug and not checkpoint:
        raise ValueError("--paper-color-bug changes what a --checkpoint's image tower is fed; give --checkpoint "
                         "(the baselines always see the true pixels)")


def make_embedders(kinds: Sequence[str], *, checkpoint: str | None = None, step: int | None = None,
                   crop_size: int | None = None, paper_color_bug: bool = False, seed: int = 0) -> Embedders:
    """The embedders of `kinds` (see the module docstring), in that order; paper_color_bug feeds the learned
    one the paper evaluator's colour-wrapped crops; seed: the random-init weights."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown embedder(s) {unknown}; known: {', '.join(KINDS)}")
    check_sources(checkpoint=checkpoint, step=step, crop_size=crop_size, paper_color_bug=paper_color_bug)
    needs_model = [k for k in kinds if k in MODEL_KINDS]
    if needs_model and not checkpoint:
        raise ValueError(f"{needs_model[0]} needs --checkpoint")
    models: dict[str, Any] = {}
    config = None
    if checkpoint:
        model, config, _ = workdir.load_model(checkpoint, step)
        crop_size = int(config.data.crop_size)
        models["learned"] = model
        if "random-init" in kinds:
            models["random-init"] = random_init_model(config, seed=seed)
            models["random-init"].eval()
    crop_size = DEFAULT_CROP_SIZE if crop_size is None else int(crop_size)
    out: dict[str, PatchEmbedder] = {}
    for kind in kinds:
        if kind == "learned":
            e = model_embedder(models["learned"], crop_size, name=f"model:{workdir.model_name(checkpoint)}")
            out[kind] = with_paper_color_bug(e) if paper_color_bug else e
        elif kind == "random-init":
            out[kind] = model_embedder(models["random-init"], crop_size, name="random-init")
        elif kind == "noise":
            out[kind] = baselines.noise_embedder(crop_size)
        else:
            out[kind] = baselines.random_embedder(crop_size)
    return Embedders({k: replicate(e) for k, e in out.items()}, models, config, crop_size)
