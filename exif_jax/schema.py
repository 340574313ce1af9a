"""The config schema: every key a run reads, its default, and what it means. One place for the numbers.

Every config file (configs/*.py) starts from base_config() and overrides what it changes; the code reads
these fields directly (no per-call defaults). `exif_jax.config.load_config` then resolves the presets once
(model.image.variant -> ViT sizes or the ResNet depth) into plain fields, so `config.json` in a workdir
records exactly what was built; `exif_jax.config.upgrade` reads an older config.json into this schema.

Presets and explicit fields: a size left at None takes the variant's value; a size given explicitly that
disagrees with the variant is an error naming both (`--config.model.image.patch=32` on configs/vit_b16.py
says so; `--config.model.image.variant=B/32` is the way to ask for a ViT-B/32), never silently ignored.
"""
from __future__ import annotations

import ml_collections

from exif_jax import exif

# config.json's schema version: 2 since presets resolve into plain fields (older files: exif_jax.config.upgrade).
SCHEMA_VERSION = 2


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default (sizes None: from the variant)."""
    c = ml_collections.ConfigDict()
    c.schema = SCHEMA_VERSION
    c.seed = 0

    # EXIF -> text. The tag set and order are part of the model: changing them changes the text.
    c.exif = ml_collections.ConfigDict()
    c.exif.tags = tuple(exif.DEFAULT_TAGS)
    c.exif.max_value_len = 40
    c.exif.style = "metadata_extractor"  # or "official" (the paper code's value refinement and tag order)

    # Tokenizer.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "sentencepiece"  # or "wordpiece" (DistilBERT's, for the paper's weights)
    c.tokenizer.model = ""              # "" -> the bundled sentencepiece model; wordpiece: its vocab.txt
    c.tokenizer.max_len = 64            # ids per text, eos included; longer texts are cut, eos kept
    c.tokenizer.lowercase = True        # wordpiece only (distilbert-base-uncased)

    # Data: `exif-jax build-data` output.
    c.data = ml_collections.ConfigDict()
    c.data.train_dir = ""
    c.data.crop_size = 128              # native-resolution crops, never resized
    c.data.crops_per_image = 1          # crops of one photo per pass over it
    c.data.global_batch_size = 1024     # crops per step over all processes
    c.data.worker_count = 0             # grain worker processes per host
    c.data.read_threads = 2             # grain read threads per process (each keeps a batch's or a photo's
                                        # reads in flight: raise it for object storage, e.g. 8)
    c.data.log_every_s = 60.0           # seconds between a reading process's storage log lines (requests,
                                        # retries, bytes); 0 -> after every read
    c.data.prefetch_buffer = 2          # batches prefetched
    c.data.num_epochs = 0               # 0 -> repeat forever (the step count ends training)
    c.data.shuffle = True               # seeded global shuffle, a new order every epoch
    c.data.decode = "auto"              # "auto": region decode where build-data rewrote the photo; "whole":
                                        # always decode the whole photo (the slow path; same pixels)
    c.data.spread_batches = 0           # crops permuted over windows of this many local batches, so a photo's
                                        # k crops land in different batches; 0 -> 4 when crops_per_image > 1;
                                        # 1 -> off

    # Model.
    c.model = ml_collections.ConfigDict()
    img = c.model.image = ml_collections.ConfigDict()
    img.kind = "vit"                    # or "resnet"
    # ViT: "S/16", "B/16", "L/14", ... ("" = sizes below); ResNet: "50" | "101" | "152" (torchvision) or
    # "tiny" (one block a stage, base width = width).
    img.variant = ""
    img.width = None
    img.depth = None
    img.heads = None
    img.mlp_dim = None
    img.patch = None
    img.pool = "avg"                    # ViT: "avg" | "map" (SigLIP) | "cls"
    img.size = c.data.get_ref("crop_size")  # the ViT's position table is built for this crop
    img.mean = (0.5, 0.5, 0.5)          # uint8/255 normalized on device; CLIP weights want CLIP's stats
    img.std = (0.5, 0.5, 0.5)
    img.head = "linear"                 # projection to embed_dim; "none" needs width == embed_dim (SigLIP+map)
    img.head_bias = True
    img.bn_frozen = False               # ResNet: BatchNorm on its running statistics in train mode too
    # ViT: what each block keeps for the backward pass. "none": everything (fastest while memory lasts);
    # "dots": matmul outputs without batch dims (q/k/v/out and MLP projections), attention recomputed;
    # "dots_all": every matmul output; "full": only the block's input (least memory, ~1/3 more FLOPs).
    # config.json files from before were a boolean: true reads as "full", false as "none".
    img.remat = "none"

    txt = c.model.text = ml_collections.ConfigDict()
    txt.kind = "transformer"            # or "distilbert" (the paper's tower)
    txt.width = 512
    txt.depth = 6
    txt.heads = 8
    txt.mlp_dim = 2048
    txt.vocab_size = 0                  # 0 -> the tokenizer's (the trainer records the value it built)
    txt.max_len = c.tokenizer.get_ref("max_len")
    txt.pool = "mean"                   # "last" (SigLIP) | "eos" (first eos) | "mean" (masked, the paper's)
    txt.pad_id = 0                      # sentencepiece model: pad=0, eos=1, unk=2
    txt.eos_id = 1
    txt.mask_pad = True                 # False = SigLIP (attends to its pad tokens)
    txt.causal = False
    txt.head = "linear"
    txt.head_bias = True
    txt.remat = "none"                  # as model.image.remat, per text block (DistilBERT's too)

    m = c.model
    m.embed_dim = 512
    # The contrastive logit scale (what cosine similarities are multiplied by; temperature = 1 / scale).
    m.logit_scale_init = 1 / 0.07
    m.logit_scale_max = 100.0           # clip of a learned scale (inf: none)
    m.learn_logit_scale = True          # False: the init is a fixed constant (the paper's 100)
    m.logit_bias_init = -10.0           # sigmoid loss only
    m.dtype = "bfloat16"                # compute
    m.param_dtype = "float32"
    # Step speed knobs (benchmarks/gpu_suite.py sweeps them; the defaults are the safe, portable choice).
    # Attention in the ViT and text transformer (not DistilBERT, which keeps its own): "xla" is
    # jax.nn.dot_product_attention's XLA path (logits and softmax in f32); "cudnn" its cuDNN fused attention
    # (CUDA GPUs with bf16/fp16 compute only, an error elsewhere; a checkpoint trained with it loads with
    # "xla" for inference off a GPU, the same math); "einsum" the same written out with its logits and
    # softmax in model.norm_dtype (the reference the others are tested against; bf16 softmax when "").
    m.attention = "xla"
    # What LayerNorms (ViT, text transformer) and BatchNorms (ResNet) compute and output in, and the "einsum"
    # attention's softmax dtype: "" = model.dtype (statistics are f32 either way), or e.g. "float32".
    m.norm_dtype = ""

    # Loss.
    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "infonce"             # or "sigmoid"
    c.loss.impl = "all_gather"          # "naive" | "all_gather" | "ring"

    # Mesh: -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.mesh.fsdp_min_size = 2**14        # arrays with fewer elements stay replicated on the fsdp axis

    # Optimizer and schedule (AdamW, warmup then cosine to end_lr at train.steps).
    c.optim = ml_collections.ConfigDict(dict(
        lr=5e-4, end_lr=0.0, warmup_steps=2_000, weight_decay=0.05, clip_norm=1.0, b1=0.9, b2=0.98, eps=1e-8,
        grad_accum=1))

    # Loop.
    c.train = ml_collections.ConfigDict(dict(
        steps=10_000, log_every=50, ckpt_every=1_000, keep=3, max_nan_skips=10))
    c.train.max_steps_per_run = 0       # >0: leave (with a checkpoint) after this many steps of this run
                                        # (time-limited jobs); the schedule still spans train.steps
    return c
