"""Localization speed: seconds per ~1 MP photo for ViT-B/16 and ResNet-50 at p=128 (random weights), the
noise baseline, the consensus step alone, and the fraction of this machine's f32 matmul peak (a large GEMM
timed in the same run) that patch embedding reaches.

A 1 MP photo (1155 x 866) at the paper's stride ((1155 - 128) // 30 = 34) has 22 x 31 = 682 patches. On a
CPU that is minutes for ViT-B/16, so by default only --patches of them are embedded (through the real
embed_patches path, after a warm-up call) and the per-photo time is extrapolated linearly: the table says so.

Run: .venv/bin/python benchmarks/localize.py [--patches 32] [--reps 2] [--full]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from exif_jax.eval import baselines, localize
from exif_jax.eval import consensus as cons
from exif_jax.eval.embedders import random_init_model
from exif_jax.eval.patches import Grid, default_mesh, embed_patches, make_grid, model_embedder, replicate
from exif_jax.models import resnet, towers, vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, P = 866, 1155, 128


def _timed(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def gemm_peak(n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of an n x n x n f32 matmul on the first device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2.0 * n ** 3 / _timed(lambda: f(a), reps)


def config_for(kind: str):
    """configs/tiny.py's text tower with a ViT-B/16 or ResNet-50 image tower, resolved like a training run."""
    from exif_jax.config import load_config

    sizes = ["model.image.width=None", "model.image.depth=None", "model.image.heads=None",
             "model.image.mlp_dim=None", "model.image.patch=None"]  # tiny's explicit sizes would win over B/16
    image = (["model.image.kind=vit", "model.image.variant=B/16"] + sizes if kind == "vit"
             else ["model.image.kind=resnet", "model.image.variant=50", "model.image.width=None"])
    return load_config(os.path.join(ROOT, "configs", "tiny.py"),
                       [f"data.crop_size={P}", "model.dtype=float32",  # CPU: bf16 matmuls are not faster here
                        "model.embed_dim=512", *image])


def image_flops(c) -> float:
    """Forward FLOPs of one patch through the image tower (matmuls/convs, 2 per multiply-add)."""
    img = c.model.image
    if img.kind == "vit":
        s = towers.vit_sizes(img)
        return vit.vit_forward_flops(P, s["patch"], s["width"], s["depth"], s["mlp_dim"], img.pool,
                                     c.model.embed_dim)
    variant, width = towers.resnet_sizes(img)
    return resnet.resnet_forward_flops(P, variant, width, c.model.embed_dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=32,
                    help="patches embedded per timing (rounded up to whole grid rows of 31)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="embed all 682 patches (no extrapolation)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    grid = make_grid(H, W, P)
    mesh = default_mesh()
    peak = gemm_peak()
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} x {dev.device_kind} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores); f32 GEMM 2048^3: {peak / 1e9:.1f} GFLOP/s")
    print(f"photo {W}x{H}, p={P}, stride {grid.stride}: {grid.nh}x{grid.nw} = {grid.n} patches, "
          f"{grid.cells[0]}x{grid.cells[1]} cells\n")
    k = grid.n if args.full else min(args.patches, grid.n)
    # The first k patches of the real grid (rows of nw), through the real batched path.
    sample = Grid(H, W, P, grid.stride, -(-k // grid.nw), min(k, grid.nw))
    rows = ["| step | patches timed | s / patch | s / 1 MP photo | GFLOP / patch | GFLOP/s | of GEMM peak |",
            "|---|---|---|---|---|---|---|"]
    for name, kind in (("ViT-B/16", "vit"), ("ResNet-50", "resnet")):
        c = config_for(kind)
        emb = replicate(model_embedder(random_init_model(c, vocab_size=1000), P, name), mesh)
        t = _timed(lambda: embed_patches(emb, photo, sample, batch=sample.n, mesh=mesh), args.reps)
        per = t / sample.n
        fl = image_flops(c)
        rows.append(f"| embed {name} | {sample.n} | {per:.3f} | {per * grid.n:.1f}"
                    f"{'' if sample.n == grid.n else ' (extrapolated)'} | {fl / 1e9:.2f} | {fl / per / 1e9:.1f} | "
                    f"{fl / per / peak:.0%} |")
    noise = replicate(baselines.noise_embedder(P), mesh)
    t = _timed(lambda: embed_patches(noise, photo, grid, batch=256, mesh=mesh), args.reps)
    rows.append(f"| embed noise baseline | {grid.n} | {t / grid.n:.4f} | {t:.2f} | - | - | - |")
    e = jax.device_put(jax.random.normal(jax.random.key(1), (grid.n, 512)), jax.devices()[0])
    t = _timed(lambda: cons.consensus(e, grid), args.reps)
    rows.append(f"| consensus (spread + mean shift + ncut + PCA, {grid.cells[0] * grid.cells[1]} cells) | - | - | "
                f"{t:.2f} | - | - | - |")
    out = cons.consensus(e, grid)
    maps = jax.device_get([out["meanshift"], out["ncut"]])
    t = _timed(lambda: [localize.cells_to_pixels(m, grid) for m in maps], args.reps)
    rows.append(f"| cells -> pixels (2 maps) | - | - | {t:.3f} | - | - | - |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
