"""The base config: every key a run reads, with its default (exif_jax/schema.py documents each one).

Every other config in this folder starts from it (`schema.base_config()`) and overrides what it changes;
`exif-jax train --config configs/X.py --config.a.b=v` then applies command-line overrides and resolves
the presets (model.image.variant) into plain fields, which is what the workdir's config.json records.

Run (as is it needs data and sizes: it is the schema, not a recipe):
  exif-jax train --config configs/base.py --workdir runs/base --config.data.train_dir=DATA \
      --config.model.image.variant=S/16
Gives: a ViT-S/16 on 128-px crops + a 6x512 text tower, batch 1024, 10k steps.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    return schema.base_config()
