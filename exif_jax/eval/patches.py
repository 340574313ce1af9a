"""The patch grid over a photo at native resolution, and embedding every patch in large on-device batches.

Grid (as the paper's code, `PatchedImage` with num_per_dim=30): patch p = the training crop size,
stride s = (max(H, W) - p) // 30, patches at (i*s, j*s) for i < 1 + (H-p)//s, j < 1 + (W-p)//s, raster order.
One change: s is at least ceil(p / MAX_SPREAD). On photos under ~(30*p/8 + p) px on the long side the paper's
stride gets so small that the cell grid of the vote spreading (patches + p//s - 1 cells an axis), and with
it the (cells x cells) consistency maps, grows without bound (s=1 on a 160-px photo: 10^4 cells, 10^8 votes).

An embedder is anything with the learned model's interface: `apply(params, uint8 [B,p,p,3]) -> [B, D]`;
`embed_patches` runs it jitted on fixed-size batches of crops sharded over all devices.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

NUM_PER_DIM = 30
MAX_SPREAD = 8
PAPER_COLOR_BUG_HELP = (
    "compatibility with the paper's evaluation: feed the checkpoint's image tower every crop pixel x as "
    "(256 - x) mod 256, a colour negative, as the paper's splice evaluator did (torchvision ToPILImage on float "
    "pixels in [0, 255]); for comparing the released weights with the released table. Default off: the pixels "
    "as trained")


class PhotoTooSmall(ValueError):
    """The photo does not hold two patches."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """Patch positions over an H x W photo: nh x nw patches of size `patch`, `stride` apart."""
    height: int
    width: int
    patch: int
    stride: int
    nh: int
    nw: int

    @property
    def n(self) -> int:
        return self.nh * self.nw

    @property
    def spread(self) -> int:
        """Cells (stride x stride) a patch covers along an axis in the paper's vote spreading."""
        return max(1, self.patch // self.stride)

    @property
    def cells(self) -> tuple[int, int]:
        """(gh, gw): the vote-spreading cell grid."""
        return self.nh + self.spread - 1, self.nw + self.spread - 1

    def starts(self) -> np.ndarray:
        """int32 [n, 2] (top, left) of each patch, raster order (row-major over (i, j))."""
        i, j = np.meshgrid(np.arange(self.nh), np.arange(self.nw), indexing="ij")
        return (np.stack([i.ravel(), j.ravel()], axis=1) * self.stride).astype(np.int32)


def paper_stride(height: int, width: int, patch: int, num_per_dim: int = NUM_PER_DIM) -> int:
    """The paper's stride, (max(H, W) - p) // num_per_dim, at least ceil(p / MAX_SPREAD) and 1."""
    return max((max(height, width) - patch) // num_per_dim, math.ceil(patch / MAX_SPREAD), 1)


def make_grid(height: int, width: int, patch: int, stride: int | None = None,
              num_per_dim: int = NUM_PER_DIM) -> Grid:
    """The patch grid of an H x W photo; `stride` None -> `paper_stride`. Raises PhotoTooSmall under 2 patches."""
    if min(height, width) < patch:
        raise PhotoTooSmall(f"{width}x{height} px is smaller than one {patch}x{patch} patch")
    s = paper_stride(height, width, patch, num_per_dim) if stride is None else int(stride)
    if s < 1:
        raise ValueError(f"stride must be >= 1, got {s}")
    grid = Grid(height, width, patch, s, 1 + (height - patch) // s, 1 + (width - patch) // s)
    if grid.n < 2:
        raise PhotoTooSmall(f"{width}x{height} px holds only one {patch}x{patch} patch at stride {s}; "
                            "consistency needs two")
    return grid


class PatchEmbedder(NamedTuple):
    """A patch embedding function: apply(params, uint8 [B,p,p,3]) -> [B, D], with its params and p.

    standardize: z-score each feature over the photo's patches before the cosine (hand-made features are
    all positive, so their raw cosines are all near 1); the learned model's embeddings are used as they are.
    """
    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    patch_size: int
    name: str
    standardize: bool = False


def model_embedder(model: Any, patch_size: int, name: str = "model") -> PatchEmbedder:
    """The DualTower's image tower (eval mode) as a PatchEmbedder."""
    model.eval()
    graphdef, state = nnx.split(model)

    def apply(state_, patches):
        return nnx.merge(graphdef, state_).embed_image(patches)

    return PatchEmbedder(apply, state, int(patch_size), name)


def paper_color_wrap(patches: jax.Array) -> jax.Array:
    """uint8 patches as the paper's splice evaluator fed them: (256 - x) mod 256, a colour negative with 0 kept.

    hellomuffin/exif-as-language eval/image_splice/exif_sc.py: PatchedImage holds the photo as float pixels
    in [0, 255]; `preprocess` applies torchvision's ToPILImage, which for a float tensor computes
    `pic.mul(255).byte()` (it expects [0, 1]): 255 x, cast to uint8 through int64, i.e. 255 x mod 256; then
    ToTensor and Normalize as in training. Written here the same way: x * 255, modulo 256."""
    return (patches.astype(jnp.int32) * 255 % 256).astype(jnp.uint8)


def with_paper_color_bug(embedder: PatchEmbedder) -> PatchEmbedder:
    """The embedder fed `paper_color_wrap`ped patches: what the image tower saw in the paper's released evaluator."""
    apply = embedder.apply
    return embedder._replace(apply=lambda params, patches: apply(params, paper_color_wrap(patches)),
                             name=f"{embedder.name} (paper color bug)")


def default_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over `devices` (default: all). Auto axes: embedders are written unaware of
    sharding (an Explicit mesh rejects the batched crop gather)."""
    devices = list(devices or jax.devices())
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicate(embedder: PatchEmbedder, mesh: jax.sharding.Mesh | None = None) -> PatchEmbedder:
    """The embedder with its params replicated over the mesh (do it once, not per photo)."""
    mesh = mesh or default_mesh()
    return embedder._replace(params=jax.device_put(embedder.params, NamedSharding(mesh, P())))


@functools.lru_cache(maxsize=32)
def embed_fn(apply: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """`apply` jitted: params replicated, crops and embeddings (f32) sharded over the mesh's "data" axis."""
    data = NamedSharding(mesh, P("data"))
    return jax.jit(lambda params, patches: apply(params, patches).astype(jnp.float32),
                   in_shardings=(None, data), out_shardings=data)


def crop_patches(image: np.ndarray, starts: np.ndarray, patch: int) -> np.ndarray:
    """uint8 [B, p, p, C] crops of `image` [H, W, C] at the (top, left) `starts` [B, 2]."""
    r = np.arange(patch)
    return image[starts[:, 0, None, None] + r[None, :, None], starts[:, 1, None, None] + r[None, None, :]]


def embed_patches(embedder: PatchEmbedder, image: np.ndarray, grid: Grid, *, batch: int = 256,
                  mesh: jax.sharding.Mesh | None = None) -> jax.Array:
    """[grid.n, D] f32 embeddings of every grid patch; batches sharded over the mesh's "data" axis."""
    if grid.patch != embedder.patch_size:
        raise ValueError(f"grid patch {grid.patch} != embedder patch {embedder.patch_size}")
    mesh = mesh or default_mesh()
    ndev = mesh.shape["data"]
    # Every batch has the same shape, a multiple of the devices so it shards evenly. Crops are cut on the
    # host: the compiled function then sees [batch, p, p, 3] whatever the photo size (one compile), and
    # cutting the next batch overlaps the device working on this one (dispatch is asynchronous).
    batch = max(ndev, -(-min(batch, grid.n) // ndev) * ndev)
    fn = embed_fn(embedder.apply, mesh)
    params = replicate(embedder, mesh).params  # a no-op when they already are
    image = np.asarray(image, np.uint8)
    starts = grid.starts()
    starts = np.concatenate([starts, np.zeros((-len(starts) % batch, 2), np.int32)])  # pad crops, dropped below
    data = NamedSharding(mesh, P("data"))
    outs = [fn(params, jax.device_put(crop_patches(image, starts[k:k + batch], grid.patch), data))
            for k in range(0, len(starts), batch)]
    return jnp.concatenate(outs)[:grid.n]


def embed_crops(embedder: PatchEmbedder, crops: np.ndarray, *, batch: int = 256,
                mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """f32 [B, D] embeddings of uint8 crops [B, p, p, 3], in fixed-size batches sharded over the mesh."""
    if crops.ndim != 4 or crops.shape[1:] != (embedder.patch_size, embedder.patch_size, 3):
        raise ValueError(f"crops must be [B, {embedder.patch_size}, {embedder.patch_size}, 3], got {crops.shape}")
    mesh = mesh or default_mesh()
    ndev = mesh.shape["data"]
    # One compiled shape per embedder: batch a multiple of the devices, the last batch padded.
    batch = max(ndev, -(-min(batch, len(crops)) // ndev) * ndev)
    fn, params = embed_fn(embedder.apply, mesh), replicate(embedder, mesh).params
    pad = np.concatenate([crops, np.zeros((-len(crops) % batch, *crops.shape[1:]), crops.dtype)])
    data = NamedSharding(mesh, P("data"))
    outs = [np.asarray(fn(params, jax.device_put(pad[k:k + batch], data))) for k in range(0, len(pad), batch)]
    return np.concatenate(outs)[:len(crops)] if outs else np.zeros((0, 0), np.float32)
