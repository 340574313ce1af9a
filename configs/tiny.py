"""Tiny config: the CI smoke run. A few steps of a tiny ViT + tiny text tower on 8 fake CPU devices.

Run:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 exif-jax train --config configs/tiny.py \
      --workdir /tmp/tiny --config.data.train_dir=/path/to/arrayrecords
Gives: a checkpoint, TensorBoard events and a falling loss in under a minute on 2 CPU cores.
"""
import ml_collections

from exif_jax import exif


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # EXIF -> text. The tag set and order are part of the model: changing them changes the text.
    c.exif = ml_collections.ConfigDict()
    c.exif.tags = tuple(exif.DEFAULT_TAGS)
    c.exif.max_value_len = 40
    c.exif.style = "metadata_extractor"  # or "official" (the paper code's value refinement)

    # Tokenizer: the bundled sentencepiece model unless a path is given.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = ""  # "" -> exif_jax/assets/tokenizer/exif_sp.model
    c.tokenizer.max_len = 64

    # Data: ArrayRecord shards from `exif-jax build-data`.
    c.data = ml_collections.ConfigDict()
    c.data.train_dir = ""
    c.data.crop_size = 32
    c.data.crops_per_image = 2
    c.data.global_batch_size = 16
    c.data.worker_count = 0
    c.data.prefetch_buffer = 2

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.image = ml_collections.ConfigDict(
        dict(kind="vit", width=64, depth=2, heads=4, mlp_dim=128, patch=8, pool="avg"))
    c.model.text = ml_collections.ConfigDict(
        dict(kind="transformer", width=64, depth=2, heads=4, mlp_dim=128, vocab_size=0))  # 0 -> tokenizer's
    c.model.embed_dim = 32
    c.model.temperature_init = 1 / 0.07
    c.model.temperature_max = 100.0
    c.model.learn_temperature = True
    c.model.dtype = "bfloat16"        # compute
    c.model.param_dtype = "float32"

    # Loss.
    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "infonce"     # or "sigmoid"
    c.loss.impl = "all_gather"  # "naive" | "all_gather" | "ring"

    # Mesh: -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    # Optimizer and schedule.
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, warmup_steps=2, weight_decay=0.05, clip_norm=1.0, b1=0.9, b2=0.98, grad_accum=1))

    # Loop.
    c.train = ml_collections.ConfigDict(dict(
        steps=10, log_every=1, ckpt_every=5, keep=2, max_nan_skips=3))
    return c
