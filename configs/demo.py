"""Demo config: what `make demo` trains on the bundled photos in a few minutes on 2 CPU cores.

Run (the demo does all of this for you):
  make demo                      # or: python -m exif_jax.demo --out demo_out [--quick]
Gives: a tiny exact-SigLIP-shaped model (MAP-pooled ViT, last-token text tower, widths == embed_dim) so
the checkpoint exports to transformers' SiglipModel, trained with InfoNCE on 32-px native crops of the
train cameras' photos; the demo then localizes splices made from the held-out cameras with it.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.tokenizer.max_len = 128           # the bundled texts average ~109 tokens: keep every tag
    c.data.crop_size = 32
    c.data.crops_per_image = 4          # 4 crops of each photo a pass: 12 train photos fill batches of 32
    c.data.global_batch_size = 32
    # Exact SigLIP shape (exports to transformers.SiglipModel): MAP pool, no image head, text pools the last
    # position through its head, widths == embed_dim.
    c.model.image.update(dict(width=64, depth=2, heads=4, mlp_dim=128, patch=8, pool="map", head="none"))
    c.model.text.update(dict(width=64, depth=2, heads=4, mlp_dim=128, pool="last", mask_pad=False))
    c.model.embed_dim = 64
    c.model.logit_scale_max = float("inf")
    c.model.dtype = "float32"           # CPU: bf16 is emulated and slower
    c.optim.update(dict(lr=2e-3, warmup_steps=20))
    c.train.update(dict(steps=600, ckpt_every=200, keep=1))
    return c
