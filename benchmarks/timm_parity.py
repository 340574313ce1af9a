"""timm parity of `exif-jax export --format timm`: timm's own VisionTransformer loads the .npz and must give the
JAX image tower's output (f32) within 1e-4 on crops of the bundled photos. Needs an environment where timm
imports (not this CPU venv: torchvision breaks beside torch 2.13.0+cpu), e.g. a GPU machine with CUDA
torch + torchvision + timm, plus this package's JAX requirements.

  python benchmarks/timm_parity.py                    # random SigLIP-shaped towers, pools map / avg+head / cls
  python benchmarks/timm_parity.py --workdir WD       # also a trained workdir (`exif-jax train` output)

Prints one line per case (max |diff|) and exits 1 when any case exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOL = 1e-4
SIGLIP = ["model.image.pool=map", "model.image.head=none", "model.text.pool=last", "model.text.mask_pad=False",
          "model.temperature_max=inf", "loss.kind=sigmoid", "model.embed_dim=64"]
CASES = {"map": SIGLIP,
         "avg+head": SIGLIP + ["model.image.pool=avg", "model.image.head=linear", "model.embed_dim=32"],
         "cls": SIGLIP + ["model.image.pool=cls"]}


def crops(size: int) -> np.ndarray:
    """Two native-resolution crops per bundled photo, as the training pipeline places them."""
    from exif_jax.data import pipeline

    rng = np.random.default_rng(0)
    paths = sorted(glob.glob(str(REPO / "exif_jax" / "assets" / "photos" / "*.jpg")))
    return np.concatenate([pipeline.random_crops(pipeline.decode_rgb(Path(p).read_bytes(), p), 2, size, rng)[0]
                           for p in paths])


def compare(model, config, name: str, out_dir: str) -> float:
    """Export `model` to out_dir, load it in timm, return max |timm - JAX| over the crops."""
    import torch
    from flax import nnx
    from timm.models.vision_transformer import VisionTransformer

    from exif_jax.export import timm as timm_export

    result = timm_export.export_timm(model, config, out_dir)
    vit = VisionTransformer(**result["kwargs"]).eval()
    vit.load_pretrained(result["npz"])
    x = crops(int(config.model.image.size))
    want = np.asarray(nnx.jit(lambda m, a: m.image(a))(model, x))
    pixels = (x.astype(np.float32) / 255 - np.asarray(result["mean"])) / np.asarray(result["std"])
    with torch.no_grad():
        got = vit(torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    diff = float(np.abs(got - want).max())
    print(f"{name:>10}: timm {result['model_name'] or 'VisionTransformer'} {tuple(got.shape)} "
          f"max |diff| {diff:.2e} (output std {want.std():.3f}) {'OK' if diff <= TOL else 'FAIL'}")
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a training workdir to check too")
    args = parser.parse_args()
    try:
        import timm  # noqa: F401
    except Exception as e:  # timm's import fails in several ways when torchvision is missing or mismatched
        print(f"timm does not import here ({type(e).__name__}: {e}); run this where it does", file=sys.stderr)
        return 2
    from flax import nnx

    from exif_jax import checkpoint, train
    from exif_jax.export.cli import read_workdir
    from exif_jax.models import towers
    from exif_jax.tokenizer import Tokenizer

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES.items():
            config = train.load_config(str(REPO / "configs" / "tiny.py"), overrides)
            config.model.dtype = "float32"
            model = towers.create_model(config, Tokenizer().vocab_size, nnx.Rngs(0))
            worst = max(worst, compare(model, config, name, os.path.join(tmp, name)))
        if args.workdir:
            config, ckpt_dir = read_workdir(args.workdir)
            config.model.dtype = "float32"
            model, step = checkpoint.load_model(config, ckpt_dir)
            worst = max(worst, compare(model, config, f"step {step}", os.path.join(tmp, "workdir")))
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
