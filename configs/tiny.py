"""Tiny config: the CI smoke run. A few steps of a tiny ViT + tiny text tower on 8 fake CPU devices.

Run:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 exif-jax train --config configs/tiny.py \
      --workdir /tmp/tiny --config.data.train_dir=/path/to/arrayrecords
Gives: a checkpoint, TensorBoard events and a falling loss in under a minute on 2 CPU cores.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.data.crop_size = 32
    c.data.crops_per_image = 2
    c.data.global_batch_size = 16
    c.model.image.update(dict(width=64, depth=2, heads=4, mlp_dim=128, patch=8))
    c.model.text.update(dict(width=64, depth=2, heads=4, mlp_dim=128))
    c.model.embed_dim = 32
    c.optim.update(dict(lr=1e-3, warmup_steps=2))
    c.train.update(dict(steps=10, log_every=1, ckpt_every=5, keep=2, max_nan_skips=3))
    return c
