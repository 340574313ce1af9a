"""timm parity of `exif-jax export --format timm`: timm's own VisionTransformer loads the .npz (ResNet: timm's
ResNet loads the .safetensors) and must give the JAX image tower's output (f32) within 1e-4 on crops of the
bundled photos. Needs an environment where timm imports: not the project's venv (torchvision breaks beside
torch 2.13.0+cpu), but a second one works on the CPU:
  python -m venv /tmp/tv && . /tmp/tv/bin/activate
  pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 && pip install -e .

  python benchmarks/timm_parity.py                    # random towers: ViT pools map / avg+head / cls, ResNets
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
          "model.logit_scale_max=inf", "loss.kind=sigmoid", "model.embed_dim=64"]
CASES = {"map": SIGLIP,
         "avg+head": SIGLIP + ["model.image.pool=avg", "model.image.head=linear", "model.embed_dim=32"],
         "cls": SIGLIP + ["model.image.pool=cls"],
         "rn-tiny": ["model.image.kind=resnet", "model.image.variant=tiny", "model.image.width=64"],
         "rn50": ["model.image.kind=resnet", "model.image.variant=50", "model.image.head=none",
                  "model.embed_dim=2048"]}


def crops(size: int) -> np.ndarray:
    """Two native-resolution crops per bundled photo, as the training pipeline places them."""
    from exif_jax.data import pipeline
    from exif_jax.data.crops import read_rgb

    rng = np.random.default_rng(0)
    paths = sorted(glob.glob(str(REPO / "exif_jax" / "assets" / "photos" / "*.jpg")))
    return np.concatenate([pipeline.random_crops(read_rgb(p), 2, size, rng)[0]
                           for p in paths])


def compare(model, config, name: str, out_dir: str) -> float:
    """Export `model` to out_dir, load it in timm, return max |timm - JAX| over the crops."""
    import torch
    from flax import nnx
    from timm.models.vision_transformer import VisionTransformer

    from exif_jax.export import timm as timm_export

    result = timm_export.export_timm(model, config, out_dir)
    if result.get("block") == "Bottleneck":
        import timm
        from timm.models.resnet import Bottleneck, ResNet

        net = ResNet(block=Bottleneck, **result["kwargs"]).eval()
        timm.models.load_checkpoint(net, result["weights"])  # strict: every key must match
    else:
        net = VisionTransformer(**result["kwargs"]).eval()
        net.load_pretrained(result["weights"])
    x = crops(int(config.model.image.size))
    model.eval()  # BatchNorm: running statistics, as timm's eval()
    want = np.asarray(nnx.jit(lambda m, a: m.image(a))(model, x))
    pixels = (x.astype(np.float32) / 255 - np.asarray(result["mean"])) / np.asarray(result["std"])
    with torch.no_grad():
        got = net(torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    diff = float(np.abs(got - want).max())
    print(f"{name:>10}: timm {result['model_name'] or type(net).__name__} {tuple(got.shape)} "
          f"max |diff| {diff:.2e} (output std {want.std():.3f}) {'OK' if diff <= TOL else 'FAIL'}")
    return diff


def randomize_batch_stats(model) -> None:
    """Fresh BatchNorm statistics are mean 0 / var 1, which a swapped or dropped statistic would still match."""
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(1)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        shape = var[...].shape
        var[...] = jnp.asarray(rng.uniform(0.5, 2.0, shape) if path[-1] == "var" else rng.normal(0, 0.2, shape),
                               jnp.float32)


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

    from exif_jax import train, workdir
    from exif_jax.models import towers
    from exif_jax.tokenizer import Tokenizer

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES.items():
            config = train.load_config(str(REPO / "configs" / "tiny.py"), overrides)
            config.model.dtype = "float32"
            model = towers.create_model(config, Tokenizer().vocab_size, nnx.Rngs(0))
            randomize_batch_stats(model)
            worst = max(worst, compare(model, config, name, os.path.join(tmp, name)))
        if args.workdir:
            model, config, step = workdir.load_model(args.workdir, float32=True)
            worst = max(worst, compare(model, config, f"step {step}", os.path.join(tmp, "workdir")))
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
