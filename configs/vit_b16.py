"""Paper scale with a ViT: ViT-B/16 on 128-px native crops + a 6-layer width-512 text transformer over 64
tokens, both projected to 512, symmetric InfoNCE with a learned logit scale, batch 1024, ~75M samples
(50 epochs of the paper's 1.5M YFCC100M photos) in bf16.

Data: `exif-jax build-data --yfcc-exif yfcc_exif.tsv --yfcc-images DIR --out DATA` (or --images DIR).
Run (one host, all its accelerators; see launch/ for TPU pods and SLURM):
  exif-jax train --config configs/vit_b16.py --workdir runs/vit_b16 --config.data.train_dir=DATA
Gives: checkpoints every 2,000 steps (keep 3) in runs/vit_b16/ckpt, TensorBoard events in runs/vit_b16/tb.
Throughput reference (docs/paper_scale.md): one H200 ~7.4k img/s for a plain port, so ~2.8 h for 73k steps
at batch 1024; `benchmarks/train_step.py --config configs/vit_b16.py` measures it on your devices.
Larger batches: raise data.global_batch_size (and optim.lr roughly linearly); for a pod slice set
mesh.fsdp (e.g. --config.mesh.fsdp=4) when optimizer state no longer fits replicated.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    # The schema's defaults are this run's shape: 128-px crops, one per photo, batch 1024, a 6x512 text tower
    # over 64 tokens, 512-d embeddings, InfoNCE with a learned logit scale, bf16 compute, AdamW at 5e-4.
    c = schema.base_config()
    c.data.worker_count = 8          # region decodes: ~1,200 crops per core-second at k=1
                                     # (docs/camera_resolution.md), so ~7 cores feed one H200's ~8,000 crops/s
    c.data.prefetch_buffer = 4
    c.model.image.variant = "B/16"   # width 768, depth 12, heads 12, mlp 3072, patch 16 -> 64 tokens
    c.optim.update(dict(weight_decay=0.2, eps=1e-6))
    c.train.update(dict(steps=73_000, ckpt_every=2_000, max_nan_skips=20))
    return c
