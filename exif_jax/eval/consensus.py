"""Patch consistency -> localization maps and detection scores, in jax.numpy (jit-able, on device, no loops
over patch pairs).

The paper's vote spreading works on a cell grid: cells are stride x stride, a patch covers `spread = p // s`
cells an axis, and the consistency of cell a with cell b is the mean dissimilarity (1 - cosine) over all
patch pairs (i covering a, j covering b). The counts factor per axis, so that mean is four small matmuls
with row-normalized cover matrices. Each cell's map over all cells is a point for mean shift (bandwidth: the
`window`-th percentile of pairwise distances, `iters` iterations, flat kernel); the dominant mode (the point
most original points lie within a bandwidth of) is the consensus map: high = unlike the mode (oriented so
that the smaller part of the photo is high, see `consensus`).
The cell votes are 1 - z z^T (z: the cell means of the unit patch embeddings), rank <= D, so mean shift
runs in D dimensions when D < cells (exact up to rounding, and with less of it); its bandwidth percentile
is found by counting, not sorting.
Normalized cut splits the cells in two on the affinity max(0, mean cosine) (spectral: the random-walk
Fiedler vector, thresholded where the Ncut value is lowest); the smaller side is the suspect one.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from exif_jax.eval.patches import Grid

CONSENSUS = ("meanshift", "ncut")


def unit_rows(emb: jax.Array, standardize: bool = False) -> jax.Array:
    """emb's rows scaled to unit length (z-scored per feature over the rows first if standardize)."""
    x = emb.astype(jnp.float32)
    if standardize:
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


def similarity(emb: jax.Array, standardize: bool = False) -> jax.Array:
    """[N, N] cosine similarity of the rows of emb (z-scored per feature over the rows first if standardize)."""
    x = unit_rows(emb, standardize)
    return x @ x.T


def cover_matrix(n: int, spread: int) -> np.ndarray:
    """[n + spread - 1, n] f32, row-normalized: cell c averages the patches i with i <= c < i + spread."""
    c = np.arange(n + spread - 1)[:, None]
    i = np.arange(n)[None, :]
    m = ((i <= c) & (c < i + spread)).astype(np.float32)
    return m / m.sum(1, keepdims=True)


def spread_votes(dis: jax.Array, nh: int, nw: int, spread: int) -> jax.Array:
    """Patch-pair values [N, N] (N = nh*nw, raster order) -> cell-pair means [gh, gw, gh, gw]."""
    mh, mw = jnp.asarray(cover_matrix(nh, spread)), jnp.asarray(cover_matrix(nw, spread))
    d = dis.reshape(nh, nw, nh, nw)
    return jnp.einsum("ai,bj,ijkl,ck,dl->abcd", mh, mw, d, mh, mw, optimize="greedy")


def spread_patches(values: jax.Array, nh: int, nw: int, spread: int) -> jax.Array:
    """Per-patch values [N, ...] -> per-cell means [gh, gw, ...] (the same spreading, one side)."""
    mh, mw = jnp.asarray(cover_matrix(nh, spread)), jnp.asarray(cover_matrix(nw, spread))
    v = values.reshape(nh, nw, *values.shape[1:])
    return jnp.einsum("ai,bj,ij...->ab...", mh, mw, v)


def _sq_dist(a: jax.Array, b: jax.Array, metric: jax.Array | None = None) -> jax.Array:
    """Squared distances between the rows of a and b, under |v|^2 = v^T metric v (default: Euclidean)."""
    am, bm = (a, b) if metric is None else (a @ metric, b @ metric)
    d = jnp.sum(am * a, 1)[:, None] + jnp.sum(bm * b, 1)[None, :] - 2.0 * (am @ b.T)
    return jnp.maximum(d, 0.0)


def _kth_smallest_nonneg(a: jax.Array, ks: jax.Array) -> jax.Array:
    """The ks-th smallest (0-based, int32 [K]) of the finite non-negative f32 values a [M], exactly: bisection
    over the float bit patterns (monotone for x >= 0), 31 counting passes instead of a sort of M values."""
    a = a.astype(jnp.float32)
    lo = jnp.zeros(ks.shape, jnp.int32)
    hi = jnp.full(ks.shape, 0x7F800000, jnp.int32)  # +inf

    def step(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        cnt = jnp.sum(a[None, :] <= jax.lax.bitcast_convert_type(mid, jnp.float32)[:, None], 1, dtype=jnp.int32)
        ok = cnt > ks
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def percentile_nonneg(a: jax.Array, q: float, monotone: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """jnp.percentile(monotone(a), q) (linear interpolation) of non-negative values a, without sorting them
    (NaN if any is NaN). `monotone` (non-decreasing, e.g. sqrt) is applied to the two order statistics only."""
    a = a.reshape(-1).astype(jnp.float32)
    n = a.shape[0]
    pos = (jnp.float32(q) / jnp.float32(100.0)) * jnp.float32(n - 1)  # jnp.percentile's f32 arithmetic
    low, high = jnp.floor(pos), jnp.ceil(pos)
    w_high = pos - low
    idx = jnp.clip(jnp.stack([low, high]), 0, n - 1).astype(jnp.int32)
    v = _kth_smallest_nonneg(a, idx)
    v = v if monotone is None else monotone(v)
    out = v[0] * (1.0 - w_high) + v[1] * w_high
    return jnp.where(jnp.any(jnp.isnan(a)), jnp.nan, out)


def mean_shift(points: jax.Array, window: float = 10.0, iters: int = 5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mode [F], support [G], bandwidth): flat-kernel mean shift of the G points [G, F]; the mode is the mean
    of the shifted points with the most original points within one bandwidth (support counts them)."""
    x = points.astype(jnp.float32)
    # Gram-form distances lose ~eps * |x|^2 to cancellation: count that as "within".
    return _mean_shift(x, 1e-5 * jnp.max(jnp.sum(x * x, 1)), window, iters)


def _mean_shift(x: jax.Array, tol: jax.Array, window: float, iters: int,
                metric: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """mean_shift of the points x [G, K] (distances under `metric`) with the slack `tol` on squared distances."""
    # = jnp.percentile(sqrt(d2), window): sqrt is monotone, so the order statistics are roots of those of d2.
    h = percentile_nonneg(_sq_dist(x, x, metric), window, jnp.sqrt)
    h2 = h * h + tol

    def step(_, y):
        w = (_sq_dist(y, x, metric) <= h2).astype(jnp.float32)
        cnt = w.sum(1, keepdims=True)
        return jnp.where(cnt > 0, (w @ x) / jnp.maximum(cnt, 1.0), y)

    y = jax.lax.fori_loop(0, iters, step, x)
    support = jnp.sum(_sq_dist(y, x, metric) <= h2, 1)
    best = (support == support.max()).astype(jnp.float32)
    return (best @ y) / best.sum(), support, h


def mean_shift_low_rank(z: jax.Array, window: float = 10.0, iters: int = 5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """mean_shift of the G points 1 - z z^T (the rows; z [G, D]), in D dimensions: row a is 1 - z z_a, so
    |row a - row b|^2 = (z_a - z_b)^T (z^T z) (z_a - z_b), and means commute with the affine map. Per
    iteration O(G^2 D) instead of O(G^3), and more accurate: no cancellation against |row|^2 ~ G."""
    z = z.astype(jnp.float32)
    full_sq = jnp.sum(jnp.square(1.0 - z @ z.T), 1)  # |row|^2 in G dimensions: mean_shift's slack, unchanged
    mu = z.mean(0)  # distances and means are translation-invariant; centred, the Gram form cancels less
    mode, support, h = _mean_shift(z - mu, 1e-5 * jnp.max(full_sq), window, iters, metric=z.T @ z)
    return 1.0 - z @ (mode + mu), support, h


def normalized_cut(affinity: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(labels [G] bool, fiedler [G] in [0, 1]): two-way spectral normalized cut of a [G, G] affinity
    (negatives clipped to 0). The smaller side is labelled True and has the high Fiedler values."""
    a = jnp.maximum(affinity.astype(jnp.float32), 0.0)
    a = 0.5 * (a + a.T)
    deg = a.sum(1)
    dinv = jax.lax.rsqrt(jnp.maximum(deg, 1e-12))
    _, vecs = jnp.linalg.eigh(dinv[:, None] * a * dinv[None, :])
    f = dinv * vecs[:, -2]  # second largest of D^-1/2 A D^-1/2 = second smallest of the normalized Laplacian
    # Shi-Malik: among the G-1 splits of the sorted Fiedler vector, take the one with the lowest Ncut.
    order = jnp.argsort(f)
    ap = a[order][:, order]
    vol = jnp.cumsum(deg[order])
    inner = jnp.diagonal(jnp.cumsum(jnp.cumsum(ap, 0), 1))
    cut = vol - inner
    total = vol[-1]
    ncut = cut / jnp.maximum(vol, 1e-12) + cut / jnp.maximum(total - vol, 1e-12)
    k = jnp.argmin(ncut[:-1])
    labels = jnp.zeros(f.shape, bool).at[order].set(jnp.arange(f.shape[0]) > k)
    labels = jnp.where(labels.sum() * 2 > labels.shape[0], ~labels, labels)
    lf = labels.astype(jnp.float32)
    # The split is a threshold on f: orient f so the suspect (True) side is the high one.
    m1 = jnp.sum(f * lf) / jnp.maximum(lf.sum(), 1.0)
    m0 = jnp.sum(f * (1 - lf)) / jnp.maximum((1 - lf).sum(), 1.0)
    f = jnp.where(m1 < m0, -f, f)
    fiedler = (f - f.min()) / jnp.maximum(f.max() - f.min(), 1e-12)
    return labels, fiedler


def pca_rgb(emb: jax.Array, standardize: bool = False) -> jax.Array:
    """[N, 3] whitened first three principal components of the patch features (zeros past D)."""
    x = emb.astype(jnp.float32)
    if standardize:
        x = x / (x.std(0) + 1e-6)
    x = x - x.mean(0)
    vals, vecs = jnp.linalg.eigh(x.T @ x / max(x.shape[0] - 1, 1))
    k = min(3, x.shape[1])
    comps = vecs[:, ::-1][:, :k]
    out = (x @ comps) * jax.lax.rsqrt(jnp.maximum(vals[::-1][:k], 1e-12))
    return jnp.pad(out, ((0, 0), (0, 3 - k)))


def interp_matrix(length: int, cells: int, stride: int) -> np.ndarray:
    """[length, cells] linear interpolation of cell values (cell c centred at (c + 0.5) * stride px) at each
    pixel centre; constant past the first and last centres."""
    pos = np.clip((np.arange(length) + 0.5) / stride - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((length, cells), np.float32)
    np.add.at(m, (np.arange(length), lo), 1 - frac)
    np.add.at(m, (np.arange(length), hi), frac)
    return m


@contextlib.contextmanager
def single_threaded_lapack() -> Iterator[None]:
    """BLAS/LAPACK (which XLA's CPU eigh calls) on one thread for the duration. Its default spin-waiting
    worker threads, next to XLA's own pool on a busy machine, made one 1296 x 1296 eigh take 4-12 s instead
    of 0.2 s. A no-op without threadpoolctl."""
    try:
        import scipy.linalg.cython_lapack  # noqa: F401  (load the LAPACK that jaxlib uses before scanning)
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def consensus(emb: jax.Array, grid: Grid, standardize: bool = False, window: float = 10.0,
              iters: int = 5) -> dict[str, jax.Array]:
    """Cell-level maps and detection scores from the patch embeddings [N, D] of one photo.

    meanshift [gh, gw]: mean dissimilarity to the dominant mode (paper), flipped when most cells are high
    (meanshift_flipped). ncut [gh, gw]: Fiedler vector in
    [0, 1], suspect side high; ncut_labels: its split. pca [gh, gw, 3]. Scores: score_mean (the paper's mean
    dissimilarity over cell pairs), score_ms (95th percentile minus median of the mean-shift map: how far the
    most inconsistent part stands out), score_ncut (mean dissimilarity across the ncut split minus within).
    Blocks until done (with BLAS/LAPACK on one thread, see single_threaded_lapack) unless traced under jit.
    """
    if isinstance(emb, jax.core.Tracer):  # inside someone's jit: no blocking possible
        return _consensus(emb, grid.nh, grid.nw, grid.spread, bool(standardize), float(window), int(iters))
    with single_threaded_lapack():
        # Block inside: the eigh runs when the computation does, which must be while the limit holds.
        return jax.block_until_ready(
            _consensus(emb, grid.nh, grid.nw, grid.spread, bool(standardize), float(window), int(iters)))


# Keyed on the patch grid only (not the photo's pixel size): photos of many sizes share one compile.
@functools.partial(jax.jit, static_argnames=("nh", "nw", "spread", "standardize", "window", "iters"))
def _consensus(emb: jax.Array, nh: int, nw: int, spread: int, standardize: bool, window: float,
               iters: int) -> dict[str, jax.Array]:
    gh, gw = nh + spread - 1, nw + spread - 1
    g = gh * gw
    x = unit_rows(emb, standardize)
    pred = spread_votes(1.0 - x @ x.T, nh, nw, spread).reshape(g, g)
    if x.shape[1] < g:
        # pred = 1 - z z^T with z the cell means of x (the cover matrices' rows sum to 1): rank <= D.
        ms, support, bandwidth = mean_shift_low_rank(spread_patches(x, nh, nw, spread).reshape(g, -1), window,
                                                     iters)
    else:
        ms, support, bandwidth = mean_shift(pred, window, iters)
    # The densest mode is not always the biggest part (a noisy splice can be the tighter cluster), so the
    # paper scores both orientations of its map. Here the map is flipped (within its range) when most of the
    # photo lies above its mid-range: the smaller part is the suspect one, as for ncut.
    flip = jnp.mean(ms > 0.5 * (ms.min() + ms.max())) > 0.5
    ms = jnp.where(flip, ms.min() + ms.max() - ms, ms)
    labels, fiedler = normalized_cut(1.0 - pred)
    lf = labels.astype(jnp.float32)
    same = jnp.outer(lf, lf) + jnp.outer(1 - lf, 1 - lf)
    within = jnp.sum(pred * same) / jnp.maximum(same.sum(), 1.0)
    across = jnp.sum(pred * (1 - same)) / jnp.maximum((1 - same).sum(), 1.0)
    pca = spread_patches(pca_rgb(emb, standardize), nh, nw, spread)
    return dict(
        meanshift=ms.reshape(gh, gw), ncut=fiedler.reshape(gh, gw), ncut_labels=labels.reshape(gh, gw),
        pca=pca, score_mean=pred.mean(), score_ms=jnp.percentile(ms, 95) - jnp.median(ms),
        score_ncut=across - within, bandwidth=bandwidth, mode_support=support.max(), meanshift_flipped=flip)
