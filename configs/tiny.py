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
    c.data.num_epochs = 0       # 0 -> repeat forever (the step count ends training)
    c.data.shuffle = True       # seeded global shuffle, a new order every epoch
    c.data.read_threads = 2     # decode threads per process (PIL releases the GIL while decoding)
    c.data.decode = "auto"      # "auto": region decode where build-data rewrote the photo; "whole": always
                                # decode the whole photo (the slow path; same pixels)
    c.data.spread_batches = 0   # crops permuted over windows of this many local batches, so a photo's k
                                # crops land in different batches; 0 -> 4 when crops_per_image > 1; 1 -> off

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.image = ml_collections.ConfigDict(
        dict(kind="vit", width=64, depth=2, heads=4, mlp_dim=128, patch=8, pool="avg"))
    c.model.text = ml_collections.ConfigDict(
        dict(kind="transformer", width=64, depth=2, heads=4, mlp_dim=128, vocab_size=0))  # 0 -> tokenizer's
    # Added for the towers (exif_jax/models): "" / "tiny" use the sizes above; "S/16", "B/16", ... override them.
    # kind="resnet": variant "50" (default), "101", "152" (torchvision) or "tiny" (1 block a stage, base width =
    # model.image.width); bn_frozen keeps BatchNorm on its running statistics in train mode too.
    c.model.image.variant = ""
    c.model.image.size = c.data.get_ref("crop_size")  # the ViT's position table is built for this crop
    c.model.image.mean = (0.5, 0.5, 0.5)  # uint8/255 normalized on device; CLIP weights want CLIP's stats
    c.model.image.std = (0.5, 0.5, 0.5)
    c.model.image.head = "linear"  # projection to embed_dim; "none" needs width == embed_dim (SigLIP+map)
    c.model.image.head_bias = True
    c.model.image.bn_frozen = False
    c.model.image.remat = False
    c.model.text.max_len = c.tokenizer.get_ref("max_len")
    c.model.text.pool = "mean"  # "last" (SigLIP) | "eos" (first eos) | "mean" (masked, the paper's DistilBERT)
    c.model.text.pad_id = 0     # sentencepiece model: pad=0, eos=1, unk=2
    c.model.text.eos_id = 1
    c.model.text.mask_pad = True  # False = SigLIP (attends to its pad tokens)
    c.model.text.causal = False
    c.model.text.head = "linear"
    c.model.text.head_bias = True
    c.model.text.remat = False
    c.model.logit_bias_init = -10.0  # sigmoid loss only
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
    c.mesh.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated on the fsdp axis

    # Optimizer and schedule.
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, warmup_steps=2, weight_decay=0.05, clip_norm=1.0, b1=0.9, b2=0.98, grad_accum=1))

    # Loop.
    c.train = ml_collections.ConfigDict(dict(
        steps=10, log_every=1, ckpt_every=5, keep=2, max_nan_skips=3))
    c.optim.end_lr = 0.0            # cosine decays to this at train.steps
    c.optim.eps = 1e-8              # Adam epsilon
    c.train.max_steps_per_run = 0   # >0: leave (with a checkpoint) after this many steps of this run
                                    # (time-limited jobs); the schedule still spans train.steps

    # Test hooks (tests/test_train.py); leave at the defaults for real runs.
    c.debug = ml_collections.ConfigDict()
    c.debug.poison_steps = ()       # steps (1-based) whose loss is multiplied by NaN, e.g. "3,5"
    c.debug.slow_save_step = 0      # the checkpoint save at this step sleeps slow_save_s inside the save
    c.debug.slow_save_s = 0.0       # (temporary directory written, not yet renamed) so a test can kill it
    c.debug.step_sleep_s = 0.0      # host sleep after each step, so a test can signal a run mid-loop
    return c
