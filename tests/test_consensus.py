"""Patch grid, vote spreading, mean shift, normalized cut and PCA of exif_jax.eval (patches.py, consensus.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exif_jax.eval import consensus as cons
from exif_jax.eval.localize import cells_to_pixels
from exif_jax.eval.patches import PhotoTooSmall, make_grid, paper_stride


def test_stride_formula_is_the_papers():
    g = make_grid(866, 1155, 128)  # ~1 MP
    assert g.stride == (1155 - 128) // 30 == 34
    assert (g.nh, g.nw) == (1 + (866 - 128) // 34, 1 + (1155 - 128) // 34) == (22, 31)
    assert g.spread == 128 // 34 == 3 and g.cells == (24, 33)
    assert paper_stride(3000, 4000, 128) == (4000 - 128) // 30
    # Small photos: the stride stops at ceil(p / 8) so the cell grid stays bounded.
    assert paper_stride(200, 200, 128) == 16 and make_grid(200, 200, 128).spread == 8
    assert make_grid(866, 1155, 128, stride=50).stride == 50


@pytest.mark.parametrize("h,w,p,s", [(866, 1155, 128, None), (384, 512, 32, None), (100, 61, 32, 7),
                                     (64, 200, 64, None)])
def test_grid_covers_the_image(h, w, p, s):
    g = make_grid(h, w, p, s)
    cover = np.zeros((h, w), int)
    for top, left in g.starts():
        assert 0 <= top <= h - p and 0 <= left <= w - p
        cover[top:top + p, left:left + p] += 1
    # Everything is covered but a strip narrower than the stride at the bottom / right edge.
    end_h, end_w = (g.nh - 1) * g.stride + p, (g.nw - 1) * g.stride + p
    assert h - end_h < g.stride and w - end_w < g.stride
    assert cover[:end_h, :end_w].min() >= 1 and cover[end_h:].sum() == 0 and cover[:, end_w:].sum() == 0
    assert len(g.starts()) == g.n and g.starts()[1].tolist() == ([0, g.stride] if g.nw > 1 else [g.stride, 0])


def test_too_small_photos():
    with pytest.raises(PhotoTooSmall, match="smaller than one 32x32"):
        make_grid(31, 100, 32)
    with pytest.raises(PhotoTooSmall, match="only one"):
        make_grid(32, 32, 32)
    with pytest.raises(PhotoTooSmall, match="only one"):
        make_grid(32, 35, 32)  # the stride is at least ceil(32 / 8) = 4 px
    assert make_grid(32, 36, 32).n == 2


def test_spread_votes_hand_computed():
    d = 0.8
    dis = jnp.asarray([[0.0, d], [d, 0.0]])  # 1 x 2 patches, each covering 2 x 2 cells -> 2 x 3 cells
    got = np.asarray(cons.spread_votes(dis, 1, 2, 2))
    assert got.shape == (2, 3, 2, 3)
    want = np.array([[0, d / 2, d], [d / 2, d / 2, d / 2], [d, d / 2, 0]])  # cell columns 0, 1, 2
    for a in range(2):
        for c in range(2):  # both cell rows lie under both patches
            np.testing.assert_allclose(got[a, :, c, :], want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cons.spread_votes(dis, 1, 2, 1)).reshape(2, 2), dis)


def test_spread_votes_matches_the_papers_loop():
    nh, nw, spread = 3, 4, 3
    rng = np.random.default_rng(0)
    dis = rng.uniform(0, 2, (nh * nw, nh * nw)).astype(np.float32)
    gh, gw = nh + spread - 1, nw + spread - 1
    resp, votes = np.zeros((gh, gw, gh, gw)), np.zeros((gh, gw, gh, gw))
    for a in range(nh * nw):  # the paper's accumulation, one patch pair at a time
        for b in range(nh * nw):
            (i, j), (k, l) = divmod(a, nw), divmod(b, nw)
            resp[i:i + spread, j:j + spread, k:k + spread, l:l + spread] += dis[a, b]
            votes[i:i + spread, j:j + spread, k:k + spread, l:l + spread] += 1
    np.testing.assert_allclose(np.asarray(cons.spread_votes(jnp.asarray(dis), nh, nw, spread)), resp / votes,
                               rtol=1e-5)
    vals = rng.normal(size=(nh * nw, 3)).astype(np.float32)
    got = np.asarray(cons.spread_patches(jnp.asarray(vals), nh, nw, spread))
    assert got.shape == (gh, gw, 3)
    np.testing.assert_allclose(got[0, 0], vals[0], rtol=1e-5)  # corner cell: one patch
    np.testing.assert_allclose(got[1, 1], vals[[0, 1, nw, nw + 1]].mean(0), rtol=1e-5)


def test_cells_to_pixels_interpolates_between_cell_centres():
    m = cons.interp_matrix(8, 2, 4)  # cell centres at pixels 1.5 and 5.5
    np.testing.assert_allclose(m @ np.array([0.0, 8.0]), [0, 0, 1, 3, 5, 7, 8, 8])
    g = make_grid(8, 9, 4, stride=4)  # 2 x 2 patches, spread 1 -> 2 x 2 cells
    px = cells_to_pixels(np.array([[0.0, 8.0], [8.0, 16.0]]), g)
    assert px.shape == (8, 9)
    np.testing.assert_allclose(px[:, 0], [0, 0, 1, 3, 5, 7, 8, 8])
    np.testing.assert_allclose(px[0, :8], [0, 0, 1, 3, 5, 7, 8, 8])


def _two_clusters(n_major=70, n_minor=30, dim=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    x = np.concatenate([a + noise * rng.normal(size=(n_major, dim)), b + noise * rng.normal(size=(n_minor, dim))])
    perm = rng.permutation(len(x))
    minor = np.arange(len(x)) >= n_major
    return jnp.asarray(x[perm], jnp.float32), minor[perm], a, b


def test_mean_shift_finds_the_dominant_mode():
    x, minor, a, _ = _two_clusters()
    mode, support, h = jax.jit(cons.mean_shift, static_argnums=(1, 2))(x, 10.0, 5)
    assert float(h) > 0
    np.testing.assert_allclose(np.asarray(mode), a, atol=0.05)
    # 58% of all pairs are within-cluster, so the 10th-percentile bandwidth holds most of the big cluster.
    assert 35 < int(support.max()) <= 70


def test_normalized_cut_separates_two_clusters():
    x, minor, _, _ = _two_clusters(60, 40, seed=1)
    labels, fiedler = jax.jit(cons.normalized_cut)(cons.similarity(x, standardize=True))
    labels, fiedler = np.asarray(labels), np.asarray(fiedler)
    np.testing.assert_array_equal(labels, minor)  # the smaller cluster is the suspect side
    # Scaled to [0, 1]; XLA may divide by multiplying with a reciprocal, so the top lands within an ulp of 1.
    assert fiedler.min() == 0 and 1 - 1e-6 <= fiedler.max() <= 1
    assert fiedler[minor].min() > fiedler[~minor].max()


def test_pca_shape_and_whitening():
    x, _, _, _ = _two_clusters()
    rgb = np.asarray(cons.pca_rgb(x))
    assert rgb.shape == (100, 3)
    np.testing.assert_allclose(rgb.std(0, ddof=1), 1.0, rtol=1e-3)
    assert np.asarray(cons.pca_rgb(x[:, :2])).shape == (100, 3)


def test_consensus_on_a_two_region_grid():
    g = make_grid(48, 80, 16, stride=8)  # 5 x 9 patches, spread 2 -> 6 x 10 cells
    starts = g.starts()
    right = starts[:, 1] >= 48  # patches entirely in the right part
    rng = np.random.default_rng(0)
    emb = np.where(right[:, None], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(g.n, 3))
    out = cons.consensus(jnp.asarray(emb, jnp.float32), g)
    ms, labels = np.asarray(out["meanshift"]), np.asarray(out["ncut_labels"])
    assert ms.shape == labels.shape == g.cells and out["pca"].shape == (*g.cells, 3)
    # Cells from x = 64 px on are covered only by right patches: unlike the dominant (left) mode.
    assert ms[:, 8:].min() > 0.9 and ms[:, :6].max() < 0.1
    assert labels[:, 8:].all() and not labels[:, :6].any()
    assert float(out["score_mean"]) > 0 and float(out["score_ncut"]) > 0.5


@pytest.mark.parametrize("q", [0.0, 10.0, 37.5, 50.0, 95.0, 100.0])
def test_percentile_without_sorting_is_jnp_percentile(q):
    rng = np.random.default_rng(int(q))
    a = rng.uniform(0, 3, (40, 50)).astype(np.float32) ** 2
    a[:5] = 0.0  # ties and zeros, as on a distance matrix's diagonal
    a[5:10] = a[10:15]
    f = jax.jit(lambda a: cons.percentile_nonneg(a, q, jnp.sqrt))
    assert float(f(a)) == float(jnp.percentile(jnp.sqrt(a), q))  # the same order statistics, exactly
    assert float(cons.percentile_nonneg(jnp.asarray([2.0]), q)) == 2.0
    assert np.isnan(float(cons.percentile_nonneg(jnp.asarray([1.0, np.nan, 2.0]), q)))


def _mean_shift_f64(x, window=10.0, iters=5):
    """mean_shift in float64 numpy (the reference both f32 versions approximate)."""
    sq = lambda a, b: np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0)  # noqa: E731
    h = np.percentile(np.sqrt(sq(x, x)), window)
    h2 = h * h + 1e-5 * (x * x).sum(1).max()
    y = x
    for _ in range(iters):
        w = (sq(y, x) <= h2).astype(float)
        y = w @ x / w.sum(1, keepdims=True)
    s = (sq(y, x) <= h2).sum(1)
    return y[s == s.max()].mean(0), s, h


@pytest.mark.parametrize("kind", ["clusters", "random"])
def test_low_rank_mean_shift_is_mean_shift_of_the_full_points(kind):
    if kind == "clusters":
        x, _, _, _ = _two_clusters(150, 50, dim=8)
    else:  # no structure: near-equidistant points, where the flat kernel is most sensitive to rounding
        x = jax.random.normal(jax.random.key(0), (200, 8))
    z = cons.unit_rows(x) / 2  # rows of 1 - z z^T: what the cell votes are, rank 8 in 200 dimensions
    full = 1.0 - z @ z.T
    mode, support, h = jax.jit(cons.mean_shift_low_rank, static_argnums=(1, 2))(z, 10.0, 5)
    z64 = np.asarray(z, np.float64)
    want, want_support, want_h = _mean_shift_f64(1.0 - z64 @ z64.T)
    np.testing.assert_allclose(np.asarray(mode), want, atol=1e-5)
    np.testing.assert_allclose(float(h), want_h, rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(support), want_support)
    # The G-dimensional f32 version cancels against |row|^2 ~ G: its mode is near, not as near.
    np.testing.assert_allclose(np.asarray(cons.mean_shift(full, 10.0, 5)[0]), want, atol=1e-3)


def test_consensus_compiles_once_per_patch_grid():
    g1, g2 = make_grid(48, 80, 16, stride=8), make_grid(51, 86, 16, stride=8)  # other sizes, the same grid
    assert (g1.nh, g1.nw, g1.spread) == (g2.nh, g2.nw, g2.spread) and g1 != g2
    emb = jax.random.normal(jax.random.key(3), (g1.n, 5))
    before = cons._consensus._cache_size()
    a, b = cons.consensus(emb, g1), cons.consensus(emb, g2)
    assert cons._consensus._cache_size() - before <= 1
    np.testing.assert_array_equal(np.asarray(a["meanshift"]), np.asarray(b["meanshift"]))
    # Under someone else's jit it traces through (no blocking on tracers).
    c = jax.jit(lambda e: cons.consensus(e, g1)["score_mean"])(emb)
    np.testing.assert_allclose(float(c), float(a["score_mean"]), rtol=1e-6)


def test_single_threaded_lapack_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    jax.block_until_ready(jnp.linalg.eigh(jnp.eye(3)))  # jaxlib's LAPACK is loaded
    blas = lambda: [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]  # noqa: E731
    before = blas()
    with cons.single_threaded_lapack():
        assert blas() and set(blas()) == {1}
    assert blas() == before
