"""The paper's training setup (Zheng, Owens, Shrivastava, CVPR 2023; hellomuffin/exif-as-language train.py):
ResNet-50 image tower with its fc replaced by 2048 -> 768, a DistilBERT-shaped text tower (6 layers, width
768, 12 heads, MLP 3072) mean-pooled over its tokens and used as is (768-d, no projection), fixed logit
scale 100 (exp of CLIP's), 124-px native crops, batch 1024, lr 1e-4 with 5 warm-up epochs then cosine,
Adam betas (0.9, 0.98), eps 1e-6, weight decay 1e-4, ~75M samples (50 epochs of 1.5M YFCC100M photos).

Differences, on purpose: both towers start from scratch (the paper started from ImageNet ResNet-50 and
distilbert-base-uncased; `exif-jax import-official` loads the released weights instead, see
configs/official.py), the text is our sentencepiece over 64 tokens instead of WordPiece padded to 512 (the
default tag set fits in ~60), weight decay is decoupled (AdamW; torch's Adam adds it to the gradient), bf16
compute, and grads are clipped at global norm 1.

Data: `exif-jax build-data --yfcc-exif yfcc_exif.tsv --yfcc-images DIR --out DATA`.
Run:
  exif-jax train --config configs/resnet50_paper.py --workdir runs/rn50 --config.data.train_dir=DATA
Gives: the paper-shaped towers in runs/rn50/ckpt (every 2,000 steps, keep 3), TensorBoard in runs/rn50/tb.
For scale: the paper's own PyTorch setup ran at 282 img/s on one H200 (docs/paper_scale.md), ~74 hours.
"""
import ml_collections

from exif_jax import schema


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.data.crop_size = 124
    c.data.worker_count = 8          # region decodes, ~1,200 crops per core-second at k=1 (docs/camera_resolution.md)
    c.data.prefetch_buffer = 4

    m = c.model
    m.image.kind = "resnet"
    m.image.variant = "50"           # fc (the schema's linear head): Linear(2048, 768)
    m.image.mean = (0.48145466, 0.4578275, 0.40821073)   # the paper's (CLIP's) normalization
    m.image.std = (0.26862954, 0.26130258, 0.27577711)
    m.text.update(dict(width=768, heads=12, mlp_dim=3072, head="none"))  # 6 layers, mean pool: the schema's
    m.embed_dim = 768
    m.learn_logit_scale = False
    m.logit_scale_init = 100.0

    steps_per_epoch = 1_500_000 // 1024
    c.optim.update(dict(lr=1e-4, warmup_steps=5 * steps_per_epoch, weight_decay=1e-4, eps=1e-6, end_lr=1e-7))
    c.train.update(dict(steps=50 * steps_per_epoch, ckpt_every=2_000, max_nan_skips=20))
    return c
