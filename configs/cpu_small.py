"""A real (small) run on 2 CPU cores in about 30-40 minutes: a small ViT (1.4M parameters in all) on 64-px
native crops of ~100 camera photos (the default model's run: 109 photos of 94 camera models) and a 2-layer
text transformer over the EXIF text, 128 tokens: the text is ~109 sentencepiece tokens on average (171 at
most on the 143-photo test corpus), so 128 keeps the whole text of 77% of those photos and most of the rest
(64 would cut 92% of them).

Run, from the repo root (one CPU device; XLA's threads use both cores):
  exif-jax build-data --images PHOTOS --out /tmp/exif_small/data
  JAX_PLATFORMS=cpu exif-jax train --config configs/cpu_small.py --workdir /tmp/exif_small/run \
      --config.data.train_dir=/tmp/exif_small/data
  tensorboard --logdir /tmp/exif_small/run/tb    # (or read /tmp/exif_small/run/metrics.jsonl)
Measured (docs/experiments/camera_heldout: 109 photos of the train cameras, 2 cores shared with other jobs):
steps 751-1000 in 553 s (2.2 s/step, timings.json), so 1000 steps in about 30-40 minutes; train loss ~4.1
(first 25 steps) falling below 2, in-batch image->EXIF top-1 from ~0.14 to ~0.7 (last 50 steps; chance ~1/8:
8 photos x 8 crops a batch).
Checkpoints every 250 steps in /tmp/exif_small/run/ckpt; rerun the same command to resume.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.tokenizer.max_len = 128     # the EXIF text is ~109 sentencepiece tokens on average (max 171 here)

    c.data.crop_size = 64
    c.data.crops_per_image = 8       # 8 crops of each photo (spread over batches); fewer photo reads per step
    c.data.global_batch_size = 64

    m = c.model
    m.image.update(dict(width=128, depth=4, heads=4, mlp_dim=512, patch=8))
    m.text.update(dict(width=128, depth=2, heads=4, mlp_dim=512))
    m.embed_dim = 128
    m.dtype = "float32"              # bf16 matmuls are emulated (slow) on most CPUs

    c.optim.update(dict(lr=1e-3, warmup_steps=100))
    c.train.update(dict(steps=1_000, log_every=25, ckpt_every=250, keep=2))
    return c
