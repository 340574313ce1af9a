"""Paper scale with a ViT: ViT-B/16 on 128-px native crops + a 6-layer width-512 text transformer over 64
tokens, both projected to 512, symmetric InfoNCE with a learned logit scale, batch 1024, ~75M samples
(50 epochs of the paper's 1.5M YFCC100M photos) in bf16.

Data: `exif-jax build-data --yfcc-exif yfcc_exif.tsv --yfcc-images DIR --out DATA` (or --images DIR).
Run (one host, all its accelerators; see launch/ for TPU pods and SLURM):
  exif-jax train --config configs/vit_b16.py --workdir runs/vit_b16 --config.data.train_dir=DATA
Gives: checkpoints every 2,000 steps (keep 3) in runs/vit_b16/ckpt, TensorBoard events in runs/vit_b16/tb.
Throughput reference (notes/performance.md): one H200 ~7.4k img/s for a plain port, so ~2.8 h for 73k steps
at batch 1024; `benchmarks/train_step.py --config configs/vit_b16.py` measures it on your devices.
Larger batches: raise data.global_batch_size (and optim.lr roughly linearly); for a pod slice set
mesh.fsdp (e.g. --config.mesh.fsdp=4) when optimizer state no longer fits replicated.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.tokenizer.max_len = 64

    c.data.crop_size = 128
    c.data.crops_per_image = 1       # one crop per photo per step: 1024 different photos in a batch
    c.data.global_batch_size = 1024
    c.data.worker_count = 8          # region decodes: ~1,200 crops per core-second at k=1 (README section 4),
                                     # so ~7 cores feed one H200's ~8,000 crops/s
    c.data.prefetch_buffer = 4

    m = c.model
    m.image.variant = "B/16"         # width 768, depth 12, heads 12, mlp 3072, patch 16 -> 64 tokens
    m.image.pool = "avg"
    m.text.update(dict(width=512, depth=6, heads=8, mlp_dim=2048))
    m.embed_dim = 512
    m.logit_scale_init = 1 / 0.07
    m.logit_scale_max = 100.0
    m.learn_logit_scale = True
    m.dtype = "bfloat16"
    m.param_dtype = "float32"

    c.loss.kind = "infonce"
    c.loss.impl = "all_gather"

    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))  # ViT-B + Adam state fits replicated on any accelerator

    c.optim.update(dict(lr=5e-4, warmup_steps=2_000, weight_decay=0.2, clip_norm=1.0, b1=0.9, b2=0.98,
                        eps=1e-6, grad_accum=1, end_lr=0.0))
    c.train.update(dict(steps=73_000, log_every=50, ckpt_every=2_000, keep=3, max_nan_skips=20))
    return c
