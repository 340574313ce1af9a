"""Contrastive losses for (image crop, EXIF text) embedding pairs: InfoNCE (CLIP) and sigmoid (SigLIP).

Each loss comes three ways, all equal in value and gradients:
  naive       the global N x N logits (the reference; on a mesh every device computes all of it),
  all_gather  shard_map: local rows x gathered columns, n x N logits per device (open_clip local_loss),
  ring        shard_map: column chunks travel a ppermute ring, one n x n block per step, with a custom
              VJP whose backward runs the ring again (no n x N array, forward or backward).
Pair masking: off-diagonal pairs (i, j) whose image ids or text ids are equal (crops of one photo,
identical EXIF text) are true matches, not negatives. InfoNCE drops them from both softmax
denominators. The sigmoid loss counts them as positives: every pair there is its own binary
question, so several positives per row are well posed, and calling (crop of photo A, text of photo A)
a non-match, or discarding it, would throw away a correct label. Top-1 accuracy ignores them in both.
Everything is computed in float32 whatever the input dtype.

Every loss function returns (loss, metrics) with the names the trainer logs (METRICS): "loss", in-batch top-1
"i2t_top1" / "t2i_top1", and "logit_scale" (what cosine similarities were multiplied by; the temperature
of the CLIP paper is its inverse, not logged).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Metrics = dict[str, jax.Array]
METRICS = ("loss", "i2t_top1", "t2i_top1", "logit_scale")
LossFn = Callable[..., tuple[jax.Array, Metrics]]

# The loss is a tiny share of a step's FLOPs; full f32 keeps all impls equal on TPU/GPU too.
_PREC = lax.Precision.HIGHEST
_NEG = -jnp.inf


def _dots(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y.T, precision=_PREC)


def _pair_masks(g_r, g_c, iid_r, iid_c, tid_r, tid_c) -> tuple[jax.Array, jax.Array]:
    """(same pair, related-but-different pair) for a block of rows x columns, from global indices."""
    same = g_r[:, None] == g_c[None, :]
    related = (iid_r[:, None] == iid_c[None, :]) | (tid_r[:, None] == tid_c[None, :])
    return same, related & ~same


def _ids(ids: jax.Array | None, index: jax.Array) -> jax.Array:
    # Without ids every pair is its own group: the global index is unique, so nothing is masked.
    return index if ids is None else ids.astype(jnp.int32)


def _top1(n_i2t: jax.Array, n_t2i: jax.Array, n: int) -> Metrics:
    return {"i2t_top1": n_i2t.astype(jnp.float32) / n, "t2i_top1": n_t2i.astype(jnp.float32) / n}


def _metrics(loss: jax.Array, top1: Metrics, logit_scale: jax.Array) -> Metrics:
    """The names of METRICS, in one place."""
    return {"loss": loss, **top1, "logit_scale": jnp.asarray(logit_scale, jnp.float32)}


def _inputs(img, txt, logit_scale, logit_bias):
    b = jnp.zeros((), jnp.float32) if logit_bias is None else jnp.asarray(logit_bias, jnp.float32)
    return (img.astype(jnp.float32), txt.astype(jnp.float32),
            jnp.asarray(logit_scale, jnp.float32), b)


# ----------------------------------------------------------------------------------------- naive

def _naive(kind: str, img, txt, logit_scale, logit_bias, image_ids, text_ids):
    x, y, s, b = _inputs(img, txt, logit_scale, logit_bias)
    n = x.shape[0]
    g = jnp.arange(n, dtype=jnp.int32)
    iid, tid = _ids(image_ids, g), _ids(text_ids, g)
    same, related = _pair_masks(g, g, iid, iid, tid, tid)
    d = _dots(x, y)
    if kind == "infonce":
        logits = s * d
        diag = jnp.diagonal(logits)
        masked = jnp.where(related, _NEG, logits)
        loss = (jnp.sum(jax.nn.logsumexp(masked, axis=1) - diag)
                + jnp.sum(jax.nn.logsumexp(masked, axis=0) - diag)) / (2 * n)
    else:
        logits = s * d + b
        diag = jnp.diagonal(logits)
        sign = jnp.where(same | related, 1.0, -1.0)
        loss = jnp.sum(jax.nn.softplus(-sign * logits)) / n
    off = lax.stop_gradient(jnp.where(same | related, _NEG, logits))
    diag = lax.stop_gradient(diag)
    return loss, _top1(jnp.sum(diag > off.max(1)), jnp.sum(diag > off.max(0)), n)


def infonce_naive(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None):
    """Symmetric InfoNCE over the global N x N logits (single-device reference); bias is ignored."""
    loss, top1 = _naive("infonce", img, txt, logit_scale, None, image_ids, text_ids)
    return loss, _metrics(loss, top1, logit_scale)


def sigmoid_naive(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None):
    """Sigmoid (SigLIP) loss over the global N x N logits, summed over pairs / N (reference)."""
    loss, top1 = _naive("sigmoid", img, txt, logit_scale, logit_bias, image_ids, text_ids)
    return loss, _metrics(loss, top1, logit_scale)


# ---------------------------------------------------------------------------- shard_map plumbing

def _vary(tree, axes: tuple[str, ...]):
    """Mark arrays as varying over `axes` (scan carries must match the varying body outputs)."""
    def one(a):
        missing = tuple(ax for ax in axes if ax not in jax.typeof(a).mat.varying)
        return lax.pcast(a, missing, to="varying") if missing else a
    return jax.tree.map(one, tree)


def _on_mesh(local_fn, mesh: Mesh, batch_axes: tuple[str, ...], img, txt, logit_scale, logit_bias,
             image_ids, text_ids):
    """Run local_fn(x, y, s, b, iid, tid, axes=..., n_global=...) per device; None ids pass as None."""
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"batch_axes {batch_axes} name axes {missing} not in mesh {mesh.axis_names}")
    n = img.shape[0]
    shards = _size(mesh, batch_axes)
    if n % shards:
        raise ValueError(f"global batch {n} is not divisible by {shards} devices on {batch_axes}")
    row = P(batch_axes, None)
    args, specs = [img, txt, logit_scale], [row, row, P()]
    present = [logit_bias is not None, image_ids is not None, text_ids is not None]
    for arr, spec, here in zip((logit_bias, image_ids, text_ids), (P(), P(batch_axes), P(batch_axes)),
                               present):
        if here:
            args.append(arr)
            specs.append(spec)

    def per_device(x, y, s, *rest):
        rest = iter(rest)
        b, iid, tid = (next(rest) if here else None for here in present)
        return local_fn(x, y, s, b, iid, tid, axes=batch_axes, n_global=n)

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=tuple(specs), out_specs=(P(), P()))
    loss, top1 = fn(*args)
    return loss, _metrics(loss, top1, logit_scale)


def _size(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _local_index(n: int, axes: tuple[str, ...]) -> jax.Array:
    return lax.axis_index(axes).astype(jnp.int32) * n + jnp.arange(n, dtype=jnp.int32)


def _naive_local(kind, x, y, s, b, iid, tid, *, axes, n_global):
    # Gather to an invariant copy: each device then computes the whole reference, like a single chip.
    gather = functools.partial(lax.all_gather, axis_name=axes, tiled=True, to="invarying")
    ids = [None if a is None else gather(a) for a in (iid, tid)]
    return _naive(kind, gather(x), gather(y), s, b, *ids)


def _naive_on_mesh(kind, img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None, *,
                   mesh, batch_axes=("data", "fsdp")):
    return _on_mesh(functools.partial(_naive_local, kind), mesh, batch_axes, img, txt, logit_scale,
                    logit_bias, image_ids, text_ids)


# ------------------------------------------------------------------------------------ all_gather

def _all_gather_local(kind, x, y, s, b, iid, tid, *, axes, n_global):
    x, y, s, b = _inputs(x, y, s, b)
    n = x.shape[0]
    g = _local_index(n, axes)
    iid, tid = _ids(iid, g), _ids(tid, g)
    # all_gather transposes to psum_scatter: each device's column grads are summed back to the owner.
    gather = functools.partial(lax.all_gather, axis_name=axes, tiled=True)
    G, Y, IID, TID = jnp.arange(n_global, dtype=jnp.int32), gather(y), gather(iid), gather(tid)
    same, related = _pair_masks(g, G, iid, IID, tid, TID)
    d = _dots(x, Y)                                  # n x N: local images vs all texts
    if kind == "infonce":
        X = gather(x)
        # The mask is symmetric, so it serves the text rows x all images block too.
        mi = jnp.where(related, _NEG, s * d)
        mt = jnp.where(related, _NEG, s * _dots(y, X))
        diag = s * jnp.sum(x * y, axis=1)
        local = (jnp.sum(jax.nn.logsumexp(mi, axis=1) - diag)
                 + jnp.sum(jax.nn.logsumexp(mt, axis=1) - diag))
        loss = lax.psum(local, axes) / (2 * n_global)
        off_t = jnp.where(same, _NEG, lax.stop_gradient(mt)).max(1)
    else:
        mi = s * d + b
        diag = s * jnp.sum(x * y, axis=1) + b
        sign = jnp.where(same | related, 1.0, -1.0)
        loss = lax.psum(jnp.sum(jax.nn.softplus(-sign * mi)), axes) / n_global
        mi = jnp.where(related, _NEG, mi)
        # Text->image needs column maxima over all rows: an N-vector pmax, then keep our columns.
        col = lax.pmax(jnp.where(same, _NEG, lax.stop_gradient(mi)).max(0), axes)
        off_t = lax.dynamic_slice_in_dim(col, g[0], n)
    off_i = jnp.where(same, _NEG, lax.stop_gradient(mi)).max(1)
    diag = lax.stop_gradient(diag)
    hits = [lax.psum(jnp.sum(diag > off), axes) for off in (off_i, off_t)]
    return loss, _top1(*hits, n_global)


def infonce_all_gather(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None, *,
                       mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
    """Symmetric InfoNCE; each device: local rows x all-gathered columns, both directions."""
    return _on_mesh(functools.partial(_all_gather_local, "infonce"), mesh, batch_axes, img, txt,
                    logit_scale, None, image_ids, text_ids)


def sigmoid_all_gather(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None, *,
                       mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
    """Sigmoid loss; each device: local images x all-gathered texts."""
    return _on_mesh(functools.partial(_all_gather_local, "sigmoid"), mesh, batch_axes, img, txt,
                    logit_scale, logit_bias, image_ids, text_ids)


# ------------------------------------------------------------------------------------------ ring

def _ring(step, rows, ride, n_fixed: int, axes, p: int):
    """Visit all p column chunks: step(rows, ride) -> (rows, ride) per chunk, ppermute between.

    ride[:n_fixed] is the chunk itself (stops after p-1 hops); the rest are its accumulators,
    which take one more hop so that they end on the chunk's owner.
    """
    perm = [(i, (i + 1) % p) for i in range(p)]
    shift = functools.partial(jax.tree.map, lambda a: lax.ppermute(a, axes, perm))

    def body(carry, _):
        rows, ride = step(*carry)
        return (rows, shift(ride)), None

    (rows, ride), _ = lax.scan(body, _vary((rows, ride), axes), length=p - 1)
    rows, ride = step(rows, ride)
    return rows, shift(ride[n_fixed:])


def _block(x, s, b, g, iid, tid, yc, gc, iidc, tidc):
    d = _dots(x, yc)
    same, related = _pair_masks(g, gc, iid, iidc, tid, tidc)
    return d, s * d + b, same, related


def _off_max(logits, same, related):
    off = jnp.where(same | related, _NEG, logits)
    return off.max(1), off.max(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 7, 8, 9))
def _ring_core(kind, x, y, s, b, g, ids, axes, p, n_global):
    return _ring_fwd(kind, x, y, s, b, g, ids, axes, p, n_global)[0]


def _ring_fwd(kind, x, y, s, b, g, ids, axes, p, n_global):
    iid, tid = ids
    diag = s * jnp.sum(x * y, axis=1) + b
    zeros, low = jnp.zeros_like(diag), jnp.full_like(diag, _NEG)
    if kind == "infonce":
        # Online logsumexp: rows (m, l) stay, column stats ride with their chunk. Seeding the max
        # with the diagonal keeps it finite even if a whole block is masked.
        def step(rows, ride):
            m, l, om = rows
            yc, gc, iidc, tidc, mc, lc, omc = ride
            _, a, same, related = _block(x, s, b, g, iid, tid, yc, gc, iidc, tidc)
            am = jnp.where(related, _NEG, a)
            m2, mc2 = jnp.maximum(m, am.max(1)), jnp.maximum(mc, am.max(0))
            l = l * jnp.exp(m - m2) + jnp.exp(am - m2[:, None]).sum(1)
            lc = lc * jnp.exp(mc - mc2) + jnp.exp(am - mc2[None, :]).sum(0)
            o_r, o_c = _off_max(a, same, related)
            return (m2, l, jnp.maximum(om, o_r)), (yc, gc, iidc, tidc, mc2, lc, jnp.maximum(omc, o_c))

        (m, l, om), (mc, lc, omc) = _ring(step, (diag, zeros, low),
                                          (y, g, iid, tid, diag, zeros, low), 4, axes, p)
        lse_r, lse_c = m + jnp.log(l), mc + jnp.log(lc)
        local = (jnp.sum(lse_r - diag) + jnp.sum(lse_c - diag)) / (2 * n_global)
        res = (x, y, s, b, g, ids, lse_r, lse_c)
    else:
        def step(rows, ride):
            acc, om = rows
            yc, gc, iidc, tidc, omc = ride
            _, a, same, related = _block(x, s, b, g, iid, tid, yc, gc, iidc, tidc)
            sign = jnp.where(same | related, 1.0, -1.0)
            o_r, o_c = _off_max(a, same, related)
            acc = acc + jax.nn.softplus(-sign * a).sum(1)
            return (acc, jnp.maximum(om, o_r)), (yc, gc, iidc, tidc, jnp.maximum(omc, o_c))

        (acc, om), (omc,) = _ring(step, (zeros, low), (y, g, iid, tid, low), 4, axes, p)
        local = jnp.sum(acc) / n_global
        res = (x, y, s, b, g, ids, None, None)
    return (local, jnp.sum(diag > om), jnp.sum(diag > omc)), res


def _ring_bwd(kind, axes, p, n_global, res, cts):
    x, y, s, b, g, ids, lse_r, lse_c = res
    iid, tid = ids
    ct = cts[0]  # the hit counts are integers: no cotangent
    zero = jnp.zeros((), jnp.float32)

    # Recompute each n x n block, turn it into dLoss/dlogits, and send the chunk's grads along with it.
    def step(rows, ride):
        dx, ds, db = rows
        yc, gc, iidc, tidc, *extra, dyc = ride
        d, a, same, related = _block(x, s, b, g, iid, tid, yc, gc, iidc, tidc)
        if kind == "infonce":
            am = jnp.where(related, _NEG, a)
            da = (jnp.exp(am - lse_r[:, None]) + jnp.exp(am - extra[0][None, :])
                  - 2.0 * same) * (ct / (2 * n_global))
        else:
            da = (jax.nn.sigmoid(a) - (same | related)) * (ct / n_global)
        dx = dx + s * jnp.matmul(da, yc, precision=_PREC)
        dyc = dyc + s * jnp.matmul(da.T, x, precision=_PREC)
        return (dx, ds + jnp.sum(da * d), db + jnp.sum(da)), (yc, gc, iidc, tidc, *extra, dyc)

    extra = (lse_c,) if kind == "infonce" else ()
    ride = (y, g, iid, tid, *extra, jnp.zeros_like(y))
    (dx, ds, db), (*_, dy) = _ring(step, (jnp.zeros_like(x), zero, zero), ride, 4 + len(extra),
                                   axes, p)
    return dx, dy, ds, db, None, (None, None)


_ring_core.defvjp(_ring_fwd, _ring_bwd)


def _ring_local(kind, x, y, s, b, iid, tid, *, axes, n_global):
    x, y, s, b = _inputs(x, y, s, b)
    n = x.shape[0]
    g = _local_index(n, axes)
    ids = (_ids(iid, g), _ids(tid, g))
    # Scale and bias enter the per-device VJP as varying values; the implicit cast's transpose psums
    # their per-device grads across the batch axes.
    s, b = _vary((s, b), axes)
    local, hit_i, hit_t = _ring_core(kind, x, y, s, b, g, ids, axes, n_global // n, n_global)
    loss = lax.psum(local, axes)
    return loss, _top1(lax.psum(hit_i, axes), lax.psum(hit_t, axes), n_global)


def infonce_ring(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None, *,
                 mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
    """Symmetric InfoNCE over a ppermute ring of n x n blocks, online logsumexp both directions."""
    return _on_mesh(functools.partial(_ring_local, "infonce"), mesh, batch_axes, img, txt,
                    logit_scale, None, image_ids, text_ids)


def sigmoid_ring(img, txt, logit_scale, logit_bias=None, image_ids=None, text_ids=None, *,
                 mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
    """Sigmoid loss with text chunks passed around a ppermute ring (as in the SigLIP paper)."""
    return _on_mesh(functools.partial(_ring_local, "sigmoid"), mesh, batch_axes, img, txt,
                    logit_scale, logit_bias, image_ids, text_ids)


# ---------------------------------------------------------------------------------- entry point

KINDS = ("infonce", "sigmoid")
IMPLS = ("naive", "all_gather", "ring")
_SHARDED = {
    ("infonce", "all_gather"): infonce_all_gather, ("infonce", "ring"): infonce_ring,
    ("sigmoid", "all_gather"): sigmoid_all_gather, ("sigmoid", "ring"): sigmoid_ring,
}


def make_loss_fn(kind: str, impl: str, mesh: Mesh | None,
                 batch_axes: tuple[str, ...] = ("data", "fsdp")) -> LossFn:
    """fn(img, txt, logit_scale, logit_bias, image_ids, text_ids) -> (loss, metrics named as METRICS)."""
    if kind not in KINDS:
        raise ValueError(f"loss kind {kind!r} is not one of {KINDS}")
    if impl not in IMPLS:
        raise ValueError(f"loss impl {impl!r} is not one of {IMPLS}")
    batch_axes = tuple(batch_axes)
    if impl == "naive":
        if mesh is None:
            return infonce_naive if kind == "infonce" else sigmoid_naive
        return functools.partial(_naive_on_mesh, kind, mesh=mesh, batch_axes=batch_axes)
    if mesh is None:
        raise ValueError(f"loss impl {impl!r} shards over a mesh; pass one (or use impl='naive')")
    return functools.partial(_SHARDED[kind, impl], mesh=mesh, batch_axes=batch_axes)
