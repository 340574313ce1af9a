"""Train-step throughput: img/s and MFU of our jitted step for a config, on whatever devices exist; on a GPU
also the PyTorch peer of the same shape (timm ViT-B/16 at 128 + a 6-layer width-512 text transformer over 64
tokens, symmetric InfoNCE, AdamW, bf16 autocast, torch.compile) timed in the same run, and the ratio.

Inputs are random and already on the device; each step is timed to completion; median of --steps after
--warmup. Prints a markdown table.

Run:
  .venv/bin/python benchmarks/train_step.py --config configs/vit_b16.py            # GPU/TPU: ours + peer
  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/train_step.py --config configs/cpu_small.py --steps 10
  # the peer on the CPU (needs timm: the second venv of benchmarks/timm_parity.py), f32 on both sides:
  JAX_PLATFORMS=cpu python benchmarks/train_step.py --config configs/vit_b16.py --peer on --steps 5 \
      --warmup 2 data.global_batch_size=32 model.dtype=float32
MFU is against the device's dense bf16 peak (exif_jax.metrics_writer.PEAK_FLOPS); on CPU against a
measured GEMM in the compute dtype on one device (so it reads "fraction of what a big matmul reaches").
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from exif_jax import metrics_writer, sharding, train
from exif_jax.models import towers


def median_step_seconds(step: Callable[[], object], steps: int, warmup: int) -> float:
    """Median wall time of `step()` (which must block until its work is done) after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_batch(config, mesh, vocab_size: int, seed: int = 0) -> dict[str, jax.Array]:
    """A global batch of random crops/tokens with unique ids, batch-sharded on `mesh`."""
    b, p, length = config.data.global_batch_size, config.data.crop_size, config.tokenizer.max_len
    rng = np.random.default_rng(seed)
    host = {"image": rng.integers(0, 256, (b, p, p, 3), dtype=np.uint8),
            "tokens": rng.integers(3, vocab_size, (b, length), dtype=np.int32),
            "image_id": np.arange(b, dtype=np.int32), "text_id": np.arange(b, dtype=np.int32)}
    return jax.device_put(host, sharding.batch_sharding(mesh))


class Prepared(NamedTuple):
    """Our step for a config, lowered for its mesh and batch (compile with `lowered.compile()`)."""
    config: Any
    trainer: train.Trainer
    lowered: Any
    batch: dict[str, jax.Array]
    lower_s: float


def prepare_ours(config, vocab_size: int) -> Prepared:
    """Trainer, a random batch (seeded: the same for every config of one batch size) and the lowered step."""
    mesh = sharding.make_mesh(config.mesh)
    trainer = train.make_trainer(config, mesh, vocab_size)
    batch = random_batch(config, mesh, vocab_size)
    t = time.perf_counter()
    lowered = trainer.train_step.lower(trainer.abstract_state, batch)
    return Prepared(config, trainer, lowered, batch, time.perf_counter() - t)


def random_state(trainer: train.Trainer, seed: int = 0) -> dict[str, Any]:
    """A state of the trainer's layout without compiling its init (which dominates small runs): weights drawn by
    numpy (exif_jax.eval.localize.random_weights), everything else zeros (AdamW's moments and counts start
    there too). For timing and for comparing settings from one starting point, not for training."""
    from exif_jax.eval.embedders import random_weights

    state = {k: random_weights(v, seed) if k in ("params", "rest") else
             jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), v) for k, v in trainer.abstract_state.items()}
    return jax.device_put(state, trainer.state_shardings)


def time_ours(prepared: Prepared, step: Callable, steps: int, warmup: int, state: Any = None) -> dict[str, float]:
    """Seconds per step, img/s and MFU of the compiled `step` (state: from trainer.init() unless given, and
    donated), plus the first step's loss and gradient norm and the last step's loss (every step sees the same
    batch, so equal settings give equal numbers)."""
    config = prepared.config
    box = {"state": prepared.trainer.init() if state is None else state, "metrics": []}

    def one():
        box["state"], m = step(box["state"], prepared.batch)
        jax.block_until_ready(m["loss"])
        box["metrics"].append(m)

    sec = median_step_seconds(one, steps, warmup)
    first, last = box["metrics"][0], box["metrics"][-1]
    box.clear()  # the state's device memory goes back before the next setting
    img_s = config.data.global_batch_size / sec
    dev = jax.devices()[0]
    peak = metrics_writer.peak_flops(dev)
    if peak is None and dev.platform == "cpu":
        peak, peak_name = metrics_writer.measure_gemm_flops(dtype=config.model.dtype), "measured GEMM"
    else:
        peak_name = "bf16 peak" if peak else "unknown"
    mfu = img_s * towers.flops_per_example(config) / (peak * jax.device_count()) if peak else float("nan")
    return {"sec": sec, "img_s": img_s, "mfu": mfu, "peak": peak or float("nan"), "peak_name": peak_name,
            "first_loss": float(first["loss"]), "first_grad_norm": float(first["grad_norm"]),
            "last_loss": float(last["loss"]), "steps_run": warmup + steps}


def bench_ours(config, steps: int, warmup: int, vocab_size: int) -> dict[str, float]:
    """Our train step on all devices: seconds per step, img/s, MFU, compile seconds (lowering included)."""
    prepared = prepare_ours(config, vocab_size)
    t = time.perf_counter()
    step = prepared.lowered.compile()
    compile_s = prepared.lower_s + time.perf_counter() - t
    return {**time_ours(prepared, step, steps, warmup), "compile_s": compile_s}


def bench_torch_peer(batch: int, crop: int, length: int, steps: int, warmup: int,
                     dtype: str = "bfloat16") -> dict[str, float]:
    """The PyTorch peer: timm ViT-B/16 at `crop` + 6-layer width-512 text, InfoNCE, AdamW, autocast to `dtype`
    (none for float32), torch.compile; on the GPU when torch sees one, else on the CPU."""
    import timm
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = dtype != "float32"

    class Text(torch.nn.Module):
        def __init__(self, vocab=1000, width=512, depth=6, heads=8, out=512):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, width)
            self.pos = torch.nn.Parameter(torch.zeros(1, length, width))
            layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                                     batch_first=True, norm_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(width)
            self.head = torch.nn.Linear(width, out)

        def forward(self, tokens):
            return self.head(self.norm(self.enc(self.emb(tokens) + self.pos)).mean(1))

    class Dual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image = timm.create_model("vit_base_patch16_224", img_size=crop, global_pool="avg",
                                           class_token=False, num_classes=512)
            self.text = Text()
            self.t = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

        def forward(self, images, tokens):
            return (F.normalize(self.image(images), dim=-1), F.normalize(self.text(tokens), dim=-1),
                    self.t.exp().clamp(max=100))

    model = Dual().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.2,
                            fused=dev.type == "cuda")
    images = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, device=dev)
    tokens = torch.randint(3, 1000, (batch, length), device=dev)
    labels = torch.arange(batch, device=dev)

    @torch.compile
    def loss_fn(images, tokens):
        with torch.autocast(dev.type, dtype=getattr(torch, dtype), enabled=autocast):
            x = (images.float() / 127.5 - 1.0)  # the same uint8 -> [-1, 1] normalization as ours, on device
            img, txt, scale = model(x, tokens)
            logits = scale * img.float() @ txt.float().T
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def one():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(images, tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()

    sec = median_step_seconds(one, steps, warmup)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"sec": sec, "img_s": batch / sec, "device": name, "torch": torch.__version__}


def main() -> None:
    """Parse flags, time ours (and the peer on a GPU), print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vit_b16.py")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--peer", choices=("auto", "on", "off"), default="auto",
                   help="time the PyTorch peer (auto: when a GPU is jax's backend; on: also on the CPU)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=v (e.g. data.global_batch_size=512)")
    args = p.parse_args()

    config = train.load_config(args.config, args.overrides)
    dev = jax.devices()[0]
    ours = bench_ours(config, args.steps, args.warmup, args.vocab_size)
    b, crop, length = config.data.global_batch_size, config.data.crop_size, config.tokenizer.max_len
    gflop = towers.flops_per_example(config) / 1e9
    print(f"\n{args.config}: batch {b}, crop {crop}, {length} tokens, {gflop:.2f} GFLOP per pair (fwd+bwd), "
          f"{jax.device_count()} x {dev.device_kind}, compute {config.model.dtype}; median of {args.steps} "
          f"steps after {args.warmup}; compile {ours['compile_s']:.1f} s\n")
    print(f"| run | s/step | img/s | MFU (vs {ours['peak_name']} {ours['peak'] / 1e12:.3g} TFLOP/s per device) |")
    print("|---|---|---|---|")
    print(f"| exif-jax (jit, {dict(sharding.make_mesh(config.mesh).shape)}) | {ours['sec']:.4f} | "
          f"{ours['img_s']:,.1f} | {ours['mfu']:.3f} |")
    want_peer = args.peer == "on" or (args.peer == "auto" and dev.platform == "gpu")
    if not want_peer:
        print("\nPyTorch peer: not run (auto runs it on a GPU; --peer on runs it on this backend too, "
              f"where timm imports; this backend is {dev.platform}).")
        return
    peer = bench_torch_peer(b, crop, length, args.steps, args.warmup, str(config.model.dtype))
    peak = ours["peak"] * jax.device_count()
    peer_mfu = peer["img_s"] * gflop * 1e9 / peak if np.isfinite(peak) else float("nan")
    cast = "no autocast" if config.model.dtype == "float32" else f"{config.model.dtype} autocast"
    print(f"| PyTorch peer (torch {peer['torch']}, timm + torch.compile, {cast}; {peer['device']}) | "
          f"{peer['sec']:.4f} | "
          f"{peer['img_s']:,.1f} | {peer_mfu:.3f} |")
    ours_on = f"; ours on {jax.device_count()} devices" if jax.device_count() > 1 else ""
    print(f"\nratio exif-jax / PyTorch: {ours['img_s'] / peer['img_s']:.2f}x (same device, same run{ours_on})")


if __name__ == "__main__":
    main()
