"""Pod-scale compiles: the real train step AOT-compiled for TPU slices by libtpu, or for fake CPU devices.

--target tpu (the default when libtpu is installed: `pip install -e '.[tpu]'`): libtpu's compiler, run on
this machine for abstract devices of a slice (`jax.experimental.topologies`, no TPU attached): v5e-16/64/256,
v4-32/128 and v5p-128 (TOPOLOGIES). In priority order, under --budget-min: both configs data parallel at
their batch on every slice; the largest per-chip batch that compiles and fits on the smallest and the largest
slice (powers of two from a linear guess, then one refinement; the larger slice starts from the smaller
one's bracket); the other meshes below. Per chip: arguments,
outputs, temporaries, generated code and their total against the chip's HBM (fits, margin), the collectives
in the TPU HLO, FLOPs and `optimal_seconds` from the cost analysis (kept only when positive). OUT.json/.md
(default docs/measurements/pod_compile_tpu) are rewritten after every compile, listing what is not done yet.
  .venv/bin/python benchmarks/pod_compile.py --target tpu                     # ~6 min a compile on 2 busy cores
  .venv/bin/python benchmarks/pod_compile.py --target tpu --resume --budget-min 30   # go on where it stopped
  ... --target tpu --resume --slices v4-32 v4-128 v5p-128 --largest-batch-slices &    # one run per core, one OUT
  ... --target tpu --slices v5e-256 --configs vit_b16 --batch-per-chip 1024 --set loss.impl=ring   # one point
  POD_COMPILE_HLO_DIR=/tmp/hlo ... keeps each compiled HLO (gzip) to read what the counts stand for.

--target cpu (the fallback without libtpu): for each config (configs/vit_b16.py, configs/resnet50_paper.py) at
its real global batch and each mesh (data x fsdp, and with tensor = 2 and 4), the step
`exif_jax.train.make_trainer` builds is lowered with
abstract inputs (ShapeDtypeStructs carrying the trainer's shardings: no array is materialised) and
compiled. Per device it reports parameter and optimizer bytes (the shards the partition rules give),
the compiled program's memory analysis (arguments, temporaries) and the collectives in the compiled HLO
(all-gather, all-reduce, reduce-scatter, collective-permute, all-to-all): op count, executions per step
and bytes per step, ops inside while loops counted times the loop's trip count; the loss's share apart.

Run (one subprocess per device count; XLA_FLAGS=--xla_force_host_platform_device_count=N is set here):
  .venv/bin/python benchmarks/pod_compile.py --target cpu             # 64 and 256 devices, both configs
  .venv/bin/python benchmarks/pod_compile.py --target cpu --devices 64 --configs vit_b16 --set loss.impl=ring
Writes OUT.json and OUT.md (default docs/measurements/pod_compile) and prints the table.

Caveats of the CPU target, so the figures are read right: this is XLA's CPU pipeline. Buffer assignment, fusion
and the scheduler differ on TPU/GPU, so temporaries are indicative; the CPU pipeline leaves gradient reductions
as all-reduce (+ slice) where the TPU/GPU pipelines form reduce-scatter (half an all-reduce's wire bytes).
Parameter/optimizer bytes and the collective pattern come from the SPMD partitioner, which is the same.
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"vit_b16": REPO / "configs" / "vit_b16.py", "resnet50_paper": REPO / "configs" / "resnet50_paper.py"}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# XLA's CPU backend at -O0 compiles several times faster; LLVM's code generation changes neither the
# partitioned program (collectives) nor the buffer assignment the memory analysis reports.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}


def meshes_for(devices: int) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) meshes compiled for a device count: data parallel, fsdp 8 and all-fsdp, tensor 2 and 4."""
    wanted = [(devices, 1, 1), (devices // 8, 8, 1), (1, devices, 1), (devices // 16, 8, 2), (devices // 32, 8, 4)]
    out = []
    for d, f, t in wanted:  # small device counts: drop meshes that do not fit, and repeats
        if d >= 1 and d * f * t == devices and (d, f, t) not in out:
            out.append((d, f, t))
    return out


# ------------------------------------------------------------------------------------------- HLO text

def _shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string ('f32[8,64]{1,0}' or a tuple of them)."""
    total = 0.0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
        if dtype.startswith("f8"):
            size = 1
        elif dtype in DTYPE_BYTES:
            size = DTYPE_BYTES[dtype]
        else:
            continue
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _shape_summary(shape: str) -> str:
    """'f32[8,64]' for an array; '(f32[8,64], +N more)' for a tuple (combined collectives)."""
    arrays = re.findall(r"\b[a-z]+\d*\[[\d,]*\]", shape)
    if not shape.startswith("("):
        return arrays[0] if arrays else shape
    return f"({arrays[0]}, +{len(arrays) - 1} more)" if len(arrays) > 1 else f"({', '.join(arrays)})"


def _matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at text[start]."""
    depth, pairs = 0, {"(": ")", "{": "}", "[": "]"}
    opener = text[start]
    for i in range(start, len(text)):
        if text[i] == opener:
            depth += 1
        elif text[i] == pairs[opener]:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _instruction(line: str) -> dict[str, Any] | None:
    """name, shape, opcode, operands and attributes of one HLO instruction line (None if not one)."""
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):
        end = _matching(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _matching(rest, op.end() - 1)
    return {"name": m.group(1), "shape": shape, "opcode": op.group(1),
            "operands": re.findall(r"%([\w.\-]+)", rest[op.end():close - 1]), "attrs": rest[close:]}


def _stack_files(text: str) -> dict[int, set[str]]:
    """stack_frame_id -> the source files on that stack, from the module's StackFrames tables."""
    def table(name: str) -> list[str]:
        m = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
        return m.group(1).splitlines() if m else []

    files = {int(k): v.strip('"') for k, v in (ln.split(None, 1) for ln in table("FileNames"))}
    loc_file = {int(ln.split()[0]): int(re.search(r"file_name_id=(\d+)", ln).group(1))
                for ln in table("FileLocations")}
    frames = {}
    for ln in table("StackFrames"):
        d = dict(re.findall(r"(\w+)=(\d+)", ln))
        # The printed parent id is one past the parent's own id (0: no parent).
        frames[int(ln.split()[0])] = (int(d["file_location_id"]), int(d["parent_frame_id"]) - 1)
    out: dict[int, set[str]] = {}
    for fid in frames:
        seen, f = set(), fid
        while f in frames and f not in seen:
            seen.add(f)
            loc, f = frames[f]
            if loc in loc_file:
                out.setdefault(fid, set()).add(files.get(loc_file[loc], ""))
    return out


def hlo_collectives(text: str, loss_file: str = "exif_jax/losses.py", top_n: int = 8) -> dict[str, Any]:
    """Collectives of a compiled HLO module: per kind ops, executions and bytes per step, for all and for the loss.

    An op's bytes are its larger buffer per device (all-gather: the gathered result; reduce-scatter: the
    input; others: the operand); ops in a while body count trip-count times (nested loops multiply). Reads
    CPU and TPU HLO (libtpu writes a reduce-scatter as an all-reduce inside an `all-reduce-scatter.N` fusion).
    """
    comps: dict[str, list[dict[str, Any]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        head = re.match(r"(ENTRY )?%([\w.\-]+) \(.*\) -> .*\{\s*$", line)
        if head:
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
            continue
        if current is not None:
            if line.startswith("}"):
                current = None
                continue
            ins = _instruction(line)
            if ins:
                comps[current].append(ins)
    shapes = {i["name"]: _shape_bytes(i["shape"]) for body in comps.values() for i in body}

    def calls(ins: dict[str, Any]) -> list[tuple[str, int | None]]:
        out = []
        for key, name in re.findall(r"\b(condition|body|to_apply|calls)=%([\w.\-]+)", ins["attrs"]):
            trip = 1
            if ins["opcode"] == "while" and key == "body":
                m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins["attrs"])
                trip = int(m.group(1)) if m else None
            out.append((name, trip))
        for group in re.findall(r"branch_computations=\{([^}]*)\}", ins["attrs"]):
            out += [(n, 1) for n in re.findall(r"%([\w.\-]+)", group)]
        return out

    memo: dict[str, bool] = {}

    def has_collective(comp: str) -> bool:
        if comp not in memo:
            memo[comp] = False  # cycle guard
            memo[comp] = any(i["opcode"].removesuffix("-start") in COLLECTIVES or
                             any(has_collective(c) for c, _ in calls(i) if c in comps) for i in comps[comp])
        return memo[comp]

    executions: dict[str, int] = defaultdict(int)
    unknown_trips = 0

    def visit(comp: str, mult: int) -> None:
        nonlocal unknown_trips
        executions[comp] += mult
        for ins in comps[comp]:
            for child, trip in calls(ins):
                if child in comps and has_collective(child):
                    if trip is None:
                        unknown_trips += 1
                    visit(child, mult * (trip or 1))

    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    visit(entry, 1)
    frames = _stack_files(text)
    empty = lambda: {"ops": 0, "executions": 0, "bytes": 0.0}  # noqa: E731
    total = {k: empty() for k in COLLECTIVES}
    loss = {k: empty() for k in COLLECTIVES}
    largest: list[tuple[float, str, str, int, str]] = []
    for comp, mult in executions.items():
        for ins in comps[comp]:
            kind = ins["opcode"].removesuffix("-start")
            if kind not in COLLECTIVES:
                continue
            if kind == "all-reduce" and comp.startswith("all-reduce-scatter"):
                # libtpu's reduce-scatter: a fusion (emitter AllReduceScatterFusion) of an all-reduce and the
                # slice each chip keeps; the called computation carries the name.
                kind = "reduce-scatter"
            operand = sum(shapes.get(o, 0.0) for o in ins["operands"])
            result = _shape_bytes(ins["shape"])
            if ins["opcode"].endswith("-start"):  # async: the result tuple holds the operand too
                result = max(result - operand, 0.0)
            nbytes = max(operand, result)
            frame = re.search(r"stack_frame_id=(\d+)", ins["attrs"])
            in_loss = (any(f.endswith(loss_file) for f in frames.get(int(frame.group(1)), ())) if frame
                       else "/shard_map/" in ins["attrs"])
            name = re.search(r'op_name="([^"]*)"', ins["attrs"])
            largest.append((nbytes * mult, kind, _shape_summary(ins["shape"]), mult,
                            name.group(1)[:120] if name else ""))
            for table in (total, loss) if in_loss else (total,):
                table[kind]["ops"] += 1
                table[kind]["executions"] += mult
                table[kind]["bytes"] += nbytes * mult
    # The heaviest ops (bytes per step), to see which computation moves the bytes.
    top = [{"bytes": b, "kind": k, "shape": sh, "executions": m, "op_name": n}
           for b, k, sh, m, n in sorted(largest, key=lambda t: -t[0])[:top_n]]
    return {"total": total, "loss": loss, "while_loops_without_trip_count": unknown_trips, "largest": top}


# ------------------------------------------------------------------------------------------ one compile

def abstract_inputs(config: Any, trainer: Any, mesh: Any) -> tuple[Any, dict[str, Any]]:
    """(state, batch) as ShapeDtypeStructs with the trainer's shardings: the step's inputs, never allocated."""
    import jax
    import jax.numpy as jnp

    from exif_jax import sharding

    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         trainer.abstract_state, trainer.state_shardings)
    b, crop, length = int(config.data.global_batch_size), int(config.data.crop_size), int(config.tokenizer.max_len)
    bsh = sharding.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((b, crop, crop, 3), jnp.uint8, sharding=bsh),
             "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bsh),
             "image_id": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bsh),
             "text_id": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bsh)}
    return state, batch


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (its largest shard per array)."""
    import jax
    import numpy as np

    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def compile_case(config_path: str | Path, mesh_shape: tuple[int, int, int], overrides: tuple[str, ...] = (),
                 fast: bool = True, devices: list[Any] | None = None) -> dict[str, Any]:
    """Compile the trainer's step for `config_path` on a (data, fsdp, tensor) mesh of all (or the given)
    devices; one result row. `devices`: e.g. abstract TPU devices (tpu_topology.devices_of), compiled by libtpu."""
    import jax

    from exif_jax import sharding, train
    from exif_jax.tokenizer import vocab_size_of

    data, fsdp, tensor = mesh_shape
    config = train.load_config(str(config_path), [f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                                  f"mesh.tensor={tensor}", *overrides])
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    trainer = train.make_trainer(config, mesh, vocab_size_of(config))
    state, batch = abstract_inputs(config, trainer, mesh)
    platform = mesh.devices.flat[0].platform
    t0 = time.perf_counter()
    lowered = trainer.train_step.lower(state, batch)
    # The CPU-only speed-ups are options of XLA's CPU backend; the TPU compiler runs at its defaults.
    compiled = lowered.compile(FAST_COMPILE if fast and platform == "cpu" else None)
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    if os.environ.get("POD_COMPILE_HLO_DIR"):  # keep the compiled HLO, to read what the counts stand for
        kind = re.sub(r"[^a-z0-9]+", "", mesh.devices.flat[0].device_kind.lower())  # v5e-16 and v4-32: both 16
        name = (f"{Path(config_path).stem}_{kind}{mesh.devices.size}_{data}x{fsdp}x{tensor}"
                f"_b{config.data.global_batch_size}")
        with gzip.open(Path(os.environ["POD_COMPILE_HLO_DIR"]) / f"{name}.hlo.gz", "wt") as f:
            f.write(hlo)
    colls = hlo_collectives(hlo)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
    row_extra = {}
    if platform != "cpu":
        row_extra = {"platform": platform, "device_kind": mesh.devices.flat[0].device_kind,
                     "generated_code_bytes": int(getattr(mem, "generated_code_size_in_bytes", 0) or 0),
                     **cost_figures(compiled)}
    return {
        "config": Path(config_path).stem, "devices": int(mesh.devices.size),
        "mesh": {"data": data, "fsdp": fsdp, "tensor": tensor}, "global_batch": int(config.data.global_batch_size),
        "loss_impl": config.loss.impl, "params": int(n_params),
        "per_device": {
            "params_bytes": shard_bytes(state["params"]), "opt_bytes": shard_bytes(state["opt"]),
            "rest_bytes": shard_bytes(state["rest"]), "batch_bytes": shard_bytes(batch),
            "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
            "alias_bytes": int(mem.alias_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
        },
        "collectives": colls["total"], "loss_collectives": colls["loss"],
        "while_loops_without_trip_count": colls["while_loops_without_trip_count"], "largest": colls["largest"],
        "compile_s": round(seconds, 1), "fast_compile": fast and platform == "cpu", "jax": jax.__version__,
        **row_extra,
    }


def cost_figures(compiled: Any) -> dict[str, Any]:
    """Per-chip FLOPs and bytes accessed from the compiler's cost analysis, and its optimal_seconds only when
    positive (libtpu gives a negative figure for whole training steps: recorded as None, with the raw value)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    optimal = cost.get("optimal_seconds")
    return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "optimal_seconds": float(optimal) if optimal is not None and optimal > 0 else None,
            "optimal_seconds_raw": float(optimal) if optimal is not None else None}


# ------------------------------------------------------------------------------------------- reports

def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}" if b >= 2**30 / 100 else f"{b / 2**20:.1f} Mi"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table row per compile: per-device memory and collective bytes per step (GiB unless 'Mi')."""
    head = ("| config | devices | mesh d×f×t | batch/dev | params+opt /dev GiB | temp /dev GiB | all-gather | "
            "all-reduce | reduce-scatter | coll.-permute | all-to-all | loss: AG / perm. | compile s |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['devices']} | {r['mesh_txt']} | | failed: {r['error'][:80]} |"
                         + " |" * 8)
            continue
        m, pd, c, lc = r["mesh"], r["per_device"], r["collectives"], r["loss_collectives"]
        cells = [f"{c[k]['executions']}× {_gib(c[k]['bytes'])}" if c[k]["executions"] else "–" for k in COLLECTIVES]
        loss = f"{lc['all-gather']['executions']} / {lc['collective-permute']['executions']}"
        lines.append(f"| {r['config']} | {r['devices']} | {m['data']}×{m['fsdp']}×{m['tensor']} | "
                     f"{r['global_batch'] // (m['data'] * m['fsdp'])} | {_gib(pd['params_bytes'] + pd['opt_bytes'])} | "
                     f"{_gib(pd['temp_bytes'])} | " + " | ".join(cells) + f" | {loss} | {r['compile_s']} |")
    return "\n".join(lines)


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    mesh = row.get("mesh")
    return row["config"], row["devices"], ("×".join(str(mesh[k]) for k in ("data", "fsdp", "tensor"))
                                           if mesh else row["mesh_txt"])


def worker(devices: int, configs: list[str], out_jsonl: str, fast: bool, overrides: list[str]) -> None:
    """Compile every mesh for `devices` fake devices (this process's jax sees exactly that many)."""
    import jax

    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, jax sees {jax.device_count()}: set XLA_FLAGS before jax loads")
    for name in configs:
        for mesh_shape in meshes_for(devices):
            t = time.perf_counter()
            try:
                row = compile_case(CONFIGS[name], mesh_shape, tuple(overrides), fast)
            except Exception as e:  # one failing mesh must not sink the others; the table says which
                row = {"config": name, "devices": devices, "mesh_txt": "×".join(map(str, mesh_shape)),
                       "error": f"{type(e).__name__}: {e}"}
            print(f"{name} {devices} devices mesh {mesh_shape}: {time.perf_counter() - t:.0f} s"
                  + (f" FAILED {row['error'][:200]}" if "error" in row else ""), flush=True)
            with open(out_jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------- TPU compiles (libtpu)

GIB = 2**30
# Cloud TPU slice name -> (libtpu topology name, chip config, HBM per chip). v4 and v5p run one jax device
# per chip (megacore: both TensorCores), so "v4-32" (32 TensorCores) is 16 chips, 2x2x4. HBM: Google's
# published per-chip figures (v5e 16 GiB, v4 32 GiB, v5p 95 GiB, v6e 32 GiB).
TOPOLOGIES: dict[str, tuple[str, str, int]] = {
    "v5e-4": ("v5e:2x2", "default", 16 * GIB),
    "v5e-16": ("v5e:4x4", "default", 16 * GIB),
    "v5e-64": ("v5e:8x8", "default", 16 * GIB),
    "v5e-256": ("v5e:16x16", "default", 16 * GIB),
    "v4-32": ("v4:2x2x4", "megacore", 32 * GIB),
    "v4-128": ("v4:4x4x4", "megacore", 32 * GIB),
    "v5p-128": ("v5p:4x4x4", "megacore", 95 * GIB),
    "v6e-16": ("v6e:4x4", "default", 32 * GIB),
}
TPU_SLICES = ["v5e-16", "v5e-64", "v5e-256", "v4-32", "v4-128", "v5p-128"]


def libtpu_available() -> bool:
    """Whether the TPU compiler (the libtpu wheel, `pip install -e '.[tpu]'`) is importable here."""
    return importlib.util.find_spec("libtpu") is not None


def chips_of(slice_name: str) -> int:
    """Chips (jax devices) of a slice: the product of its topology's dimensions."""
    return math.prod(int(x) for x in TOPOLOGIES[slice_name][0].split(":")[1].split("x"))


def tpu_devices(slice_name: str) -> list[Any]:
    """Abstract TPU devices of a slice (no TPU attached): enough for jax to lower and libtpu to compile."""
    from jax.experimental import topologies

    topology, chip_config, _ = TOPOLOGIES[slice_name]
    # libtpu's start-up otherwise asks the (absent) GCE metadata server who it is, and logs errors.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # No chip is opened, so several compiling processes (a test beside a benchmark) need not exclude each other.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_name.replace("v5e-", "v5litepod-"))
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name=chip_config,
                                        chips_per_host_bounds=(2, 2, 1), num_slices=1)
    return list(desc.devices)


def fit_figures(row: dict[str, Any], hbm: int) -> dict[str, Any]:
    """Per-chip total the program needs (arguments + outputs not aliased to them + temporaries + code) vs HBM."""
    pd = row["per_device"]
    total = (pd["argument_bytes"] + pd["output_bytes"] - pd["alias_bytes"] + pd["temp_bytes"]
             + row.get("generated_code_bytes", 0))
    return {"hbm_bytes": hbm, "total_bytes": int(total), "fits": total <= hbm, "margin_bytes": int(hbm - total)}


def _out_of_memory(message: str) -> bool:
    return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message


def tpu_case(name: str, slice_name: str, mesh_shape: tuple[int, int, int], overrides: tuple[str, ...] = (),
             global_batch: int | None = None, purpose: str = "default") -> dict[str, Any]:
    """One libtpu compile of `name`'s step on a slice; a row in pod_compile.json's format plus the topology,
    HBM fit and cost figures. A compile the compiler rejects for memory is a row with fits=False."""
    topology, _, hbm = TOPOLOGIES[slice_name]
    devices = tpu_devices(slice_name)
    sets = tuple(overrides) + ((f"data.global_batch_size={global_batch}",) if global_batch else ())
    base = {"config": name, "devices": len(devices), "slice": slice_name, "topology": topology,
            "mesh": dict(zip(("data", "fsdp", "tensor"), mesh_shape)), "purpose": purpose,
            **({"overrides": list(overrides)} if overrides else {})}
    t0 = time.perf_counter()
    try:
        row = compile_case(CONFIGS[name], mesh_shape, sets, devices=devices)
    except Exception as e:  # one failing case must not sink the others; the table says which and why
        message = f"{type(e).__name__}: {e}"
        row = {**base, "global_batch": global_batch, "compile_s": round(time.perf_counter() - t0, 1),
               "error": message[:2000]}
        if _out_of_memory(message):
            row.update({"hbm_bytes": hbm, "fits": False})
        return row
    row.update(base)
    row.update(fit_figures(row, hbm))
    return row


def _case_key(name: str, slice_name: str | None, mesh_shape: tuple[Any, ...], batch: int | None,
              overrides: tuple[str, ...]) -> tuple[Any, ...]:
    """What makes a case: a --set run's cases are other cases."""
    return (name, slice_name, *mesh_shape, batch, tuple(overrides))


def _tpu_key(row: dict[str, Any]) -> tuple[Any, ...]:
    mesh = row.get("mesh") or {}
    return _case_key(row["config"], row.get("slice"), (mesh.get("data"), mesh.get("fsdp"), mesh.get("tensor")),
                     row.get("global_batch"), tuple(row.get("overrides") or ()))


class TpuRun:
    """The TPU matrix, compiled in priority order under a wall-clock budget; OUT.json/.md rewritten after
    every compile so that a partial run still gives a table (and says what it did not reach)."""

    def __init__(self, out: Path, configs: list[str], slices: list[str], overrides: list[str],
                 budget_s: float, resume: bool, search_slices: list[str] | None = None) -> None:
        self.out, self.configs, self.slices, self.overrides = out, configs, slices, tuple(overrides)
        self.resume, self.search_slices = resume, search_slices
        self.compiled: set[tuple[Any, ...]] = set()  # the cases compiled by this run
        self._batches: dict[str, int] = {}
        self.deadline = time.monotonic() + budget_s
        self.rows: list[dict[str, Any]] = []
        self.missing: list[str] = []
        if resume and out.with_suffix(".json").exists():
            self.rows = self._one_per_case(json.loads(out.with_suffix(".json").read_text())["rows"])

    def _one_per_case(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows keyed by their batch (older runs left a failed default case's batch empty), one per case: a
        compiled row over a failed one."""
        by: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rows:
            if r.get("global_batch") is None and r["config"] in CONFIGS and \
                    tuple(r.get("overrides") or ()) == self.overrides:
                r = {**r, "global_batch": self._default_batch(r["config"])}
            k = _tpu_key(r)
            if k not in by or ("error" in by[k] and "error" not in r):
                by[k] = r
        return list(by.values())

    def _done(self, name: str, slice_name: str, mesh_shape: tuple[int, int, int], batch: int | None) -> Any:
        key = _case_key(name, slice_name, mesh_shape, batch, self.overrides)
        return next((r for r in self.rows if _tpu_key(r) == key and ("error" not in r or r.get("fits") is False)),
                    None)

    def case(self, name: str, slice_name: str, mesh_shape: tuple[int, int, int], batch: int | None = None,
             purpose: str = "default") -> dict[str, Any] | None:
        """The row for a case: from a previous run (--resume), compiled now, or None (budget spent: missing)."""
        batch = batch or self._default_batch(name)
        row = self._done(name, slice_name, mesh_shape, batch)
        if row is not None:
            return row
        label = f"{name} {slice_name} mesh {'x'.join(map(str, mesh_shape))} batch {batch} ({purpose})"
        if time.monotonic() > self.deadline:
            self.missing.append(label)
            return None
        row = tpu_case(name, slice_name, mesh_shape, self.overrides, batch, purpose)
        status = ("FAILED " + row["error"][:300]) if "error" in row and row.get("fits") is not False else (
            "does not fit" if not row.get("fits") else f"fits, {row['total_bytes'] / GIB:.2f} GiB/chip")
        print(f"{label}: {row['compile_s']:.0f} s, {status}", flush=True)
        self.rows = [r for r in self.rows if _tpu_key(r) != _tpu_key(row)] + [row]
        self.compiled.add(_tpu_key(row))
        self.write()
        return row

    def _default_batch(self, name: str) -> int:
        from exif_jax import train

        if name not in self._batches:
            config = train.load_config(str(CONFIGS[name]), list(self.overrides))
            self._batches[name] = int(config.data.global_batch_size)
        return self._batches[name]

    def largest_batch(self, name: str, slice_name: str,
                      bracket: tuple[int, int | None] | None = None) -> tuple[int, int | None] | None:
        """The largest per-chip batch that fits, data parallel; returns (largest fit, smallest miss) per chip.

        Without `bracket`: powers of two from the default batch's linear extrapolation, then one refinement
        halfway between the last fit and the first miss. With the bracket a smaller slice gave: its two ends are
        compiled first (data parallel, the state is replicated and the batch per chip is the same, so the
        per-chip memory hardly depends on the slice); when both hold here too the search ends, at the smaller
        slice's precision, and otherwise it goes on from them as above."""
        chips = chips_of(slice_name)
        mesh_shape = (chips, 1, 1)
        first = self.case(name, slice_name, mesh_shape)
        if first is None or "total_bytes" not in first:
            return None
        per_chip = first["global_batch"] // chips
        pd = first["per_device"]
        # Temporaries and the batch grow with the batch, the state does not: a first guess, then compiles decide.
        fixed = first["total_bytes"] - pd["temp_bytes"] - pd["batch_bytes"]
        growth = (pd["temp_bytes"] + pd["batch_bytes"]) / per_chip
        guess = max(1, int((first["hbm_bytes"] - fixed) / growth))
        lo, hi = (per_chip, None) if first["fits"] else (0, per_chip)  # largest fit, smallest miss so far
        seeds = [b for b in (bracket or ()) if b]
        b = 2 ** int(math.log2(guess))
        while hi is None or hi > max(2 * lo, 1):
            if seeds:
                b = seeds.pop(0)
                if b <= lo or (hi is not None and b >= hi):
                    continue
            else:
                b = max(b, 2 * lo if lo else 1)
                if hi is not None:
                    b = min(b, hi // 2)
                if b <= lo or (hi is not None and b >= hi):
                    break
            row = self.case(name, slice_name, mesh_shape, b * chips, purpose="largest batch")
            if row is None or row.get("fits") is None:  # budget spent, or a failure that is not memory
                return None
            if row["fits"]:
                lo, b = b, 2 * b
            else:
                hi, b = b, b // 2
            if bracket and (lo, hi) == tuple(bracket):
                return lo, hi  # the smaller slice's bracket holds here
        if lo and hi is not None and hi - lo > 1:
            row = self.case(name, slice_name, mesh_shape, (lo + hi) // 2 * chips, purpose="largest batch refinement")
            if row is None or row.get("fits") is None:
                return None
            lo, hi = ((lo + hi) // 2, hi) if row["fits"] else (lo, (lo + hi) // 2)
        return lo, hi

    def asked(self, batches_per_chip: list[int]) -> None:
        """Only the per-chip batches asked (--batch-per-chip): "will N fit on this slice?", data parallel."""
        for s in self.slices:
            chips = chips_of(s)
            for name in self.configs:
                for b in batches_per_chip:
                    self.case(name, s, (chips, 1, 1), b * chips, purpose="asked")
        self.write()

    def run(self) -> None:
        chips = {s: chips_of(s) for s in self.slices}
        # 1. Both models on every slice, data parallel at the config's batch.
        for s in self.slices:
            for name in self.configs:
                self.case(name, s, (chips[s], 1, 1))
        # 2. The largest per-chip batch on the smallest and the largest slice (smallest first: its bracket is
        #    where the larger slice's search starts).
        ends = sorted(self.slices, key=lambda s: chips[s])
        search = self.search_slices if self.search_slices is not None else list(dict.fromkeys([ends[0], ends[-1]]))
        found: dict[str, tuple[int, int | None] | None] = {}
        for s in sorted(search, key=lambda s: chips_of(s)):
            for name in self.configs:
                found[name] = self.largest_batch(name, s, found.get(name))
        # 3. The other meshes of the CPU table (fsdp, tensor parallel), at the config's batch.
        for s in self.slices:
            for name in self.configs:
                for mesh_shape in meshes_for(chips[s])[1:]:
                    self.case(name, s, mesh_shape)
        self.write()

    def write(self) -> None:
        order = list(CONFIGS)
        import jax

        path = self.out.with_suffix(".json")
        # --resume runs may share OUT (one per group of slices, on a machine with cores to spare): each takes
        # the lock, keeps the rows the others wrote meanwhile, and replaces the file whole.
        lock_path = Path(tempfile.gettempdir()) / f"pod_compile.{zlib.crc32(str(path.resolve()).encode()):08x}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.resume and path.exists():
                # What another run wrote since wins over this run's older copy of it (e.g. a failed case it
                # has compiled again), except for the cases this run compiled itself.
                merged = {_tpu_key(r): r for r in self.rows}
                merged.update({_tpu_key(r): r for r in self._one_per_case(json.loads(path.read_text())["rows"])})
                merged.update({_tpu_key(r): r for r in self.rows if _tpu_key(r) in self.compiled})
                self.rows = list(merged.values())
            self.rows.sort(key=lambda r: (order.index(r["config"]) if r["config"] in order else len(order),
                                          TPU_SLICES.index(r["slice"]) if r.get("slice") in TPU_SLICES else 99,
                                          -(r.get("mesh") or {}).get("data", 0), r.get("global_batch") or 0))
            tmp = path.with_suffix(f".json.{os.getpid()}")
            tmp.write_text(json.dumps(
                {"date": time.strftime("%Y-%m-%d"), "compiler": f"libtpu {importlib.metadata.version('libtpu')}, "
                 f"jax {jax.__version__}", "missing": self.missing, "rows": self.rows}, indent=1))
            tmp.replace(path)
            self.out.with_suffix(".md").write_text(tpu_markdown(self.rows, self.missing) + "\n")


def tpu_markdown(rows: list[dict[str, Any]], missing: list[str]) -> str:
    """The TPU table: per-chip memory against HBM, collectives, FLOPs; the largest batch found; what is missing."""
    head = ("| config | slice (topology) | mesh d×f×t | batch/chip | args | outputs | temps | total | HBM | fits "
            "(margin) | all-gather | all-reduce | reduce-scatter | coll.-permute | all-to-all | TFLOP/chip | "
            "optimal s | compile s |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    best: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        m = r["mesh"]
        per_chip = (r["global_batch"] // (m["data"] * m["fsdp"])) if r.get("global_batch") else "?"
        where = f"{r['slice']} ({r['topology']})"
        mesh = f"{m['data']}×{m['fsdp']}×{m['tensor']}"
        name = r["config"] + (f" ({', '.join(r['overrides'])})" if r.get("overrides") else "")  # a --set run
        if m["fsdp"] == 1 and m["tensor"] == 1:
            best[(name, where)].append(r)
        if "error" in r:
            what = "does not fit: " if r.get("fits") is False else "failed: "
            lines.append(f"| {name} | {where} | {mesh} | {per_chip} | {what}{_first_line(r['error'])} |"
                         + " |" * 13 + f" {r['compile_s']} |")
            continue
        pd, c = r["per_device"], r["collectives"]
        cells = [f"{c[k]['executions']}× {_gib(c[k]['bytes'])}" if c[k]["executions"] else "–" for k in COLLECTIVES]
        fits = f"{'yes' if r['fits'] else 'NO'} ({r['margin_bytes'] / GIB:+.2f})"
        opt = f"{r['optimal_seconds']:.4f}" if r.get("optimal_seconds") else "n/a"
        lines.append(f"| {name} | {where} | {mesh} | {per_chip} | {_gib(pd['argument_bytes'])} | "
                     f"{_gib(pd['output_bytes'] - pd['alias_bytes'])} | {_gib(pd['temp_bytes'])} | "
                     f"{_gib(r['total_bytes'])} | {r['hbm_bytes'] // GIB} | {fits} | " + " | ".join(cells)
                     + f" | {r['flops'] / 1e12:.2f} | {opt} | {r['compile_s']} |")
    lines += ["", "GiB per chip unless 'Mi'. outputs: those not aliased to arguments (the donated state). total = "
              "args + outputs + temps + generated code. HBM: the chip's published size; libtpu's own limit is a "
              "little lower (v5e: 'available HBM (15.75G)' in its out-of-memory error), so read a margin under "
              "~0.5 GiB as not fitting. fits: compiled, and total <= HBM; a compile libtpu rejects for memory "
              "is a 'does not fit' row. Collectives: executions × bytes per step, parsed from the TPU HLO. "
              "optimal s: the compiler's `optimal_seconds`, shown only when positive (n/a: libtpu returned a "
              "negative or no figure for the whole step). Compile seconds on a 2-core machine running one "
              "or two compiles at a time beside other work (libtpu compiles on one core)."]
    lines += ["", "Largest per-chip batch that fits (data parallel; compiled, not extrapolated):", "",
              "| config | slice | largest fitting batch/chip | smallest batch/chip that did not fit | compiles |",
              "|---|---|---|---|---|"]
    for (name, where), rs in best.items():
        tried = sorted({r["global_batch"] // r["mesh"]["data"]: r.get("fits") for r in rs
                        if r.get("global_batch")}.items())
        if not any(r.get("purpose", "").startswith("largest batch") for r in rs):
            continue
        fit = max((b for b, ok in tried if ok), default=None)
        miss = min((b for b, ok in tried if ok is False and (fit is None or b > fit)), default=None)
        lines.append(f"| {name} | {where} | {fit if fit else 'none tried fits'} | {miss if miss else 'not found'} "
                     "| " + ", ".join(f"{b} {'fits' if ok else 'no'}" for b, ok in tried) + " |")
    if missing:
        lines += ["", f"Not compiled in this run (--budget-min spent; `--resume` compiles them): {len(missing)}", ""]
        lines += [f"- {m}" for m in missing]
    return "\n".join(lines)


def _first_line(message: str) -> str:
    line = next((ln for ln in message.splitlines() if "memory" in ln.lower() or "exhausted" in ln.lower()),
                message.splitlines()[0] if message else "")
    return line.replace("|", "/")[:160]


def main(argv: list[str] | None = None) -> int:
    """Parse flags; TPU: compile the matrix in this process; CPU: one worker subprocess per device count.
    Writes OUT.json and OUT.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[64, 256])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default=str(REPO / "docs" / "measurements" / "pod_compile"),
                   help="writes OUT.json and OUT.md")
    p.add_argument("--full-opt", action="store_true", help="compile at XLA's default -O level (slower)")
    p.add_argument("--merge", action="store_true",
                   help="keep OUT.json's rows for the (config, devices, mesh) not compiled in this run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jsonl", help=argparse.SUPPRESS)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override applied to every compile, e.g. --set loss.impl=ring (repeatable)")
    p.add_argument("--target", choices=("auto", "tpu", "cpu"), default="auto",
                   help="tpu: libtpu's compiler for abstract TPU slices; cpu: fake CPU devices; auto: tpu when "
                        "libtpu is installed (pip install -e '.[tpu]'), else cpu")
    p.add_argument("--slices", nargs="+", default=TPU_SLICES, choices=list(TOPOLOGIES),
                   help="TPU slices (--target tpu)")
    p.add_argument("--budget-min", type=float, default=60.0,
                   help="--target tpu: start no compile after this many minutes; the table lists what is missing")
    p.add_argument("--resume", action="store_true",
                   help="--target tpu: keep OUT.json's rows and compile only the cases it lacks; several --resume "
                        "runs (e.g. one per group of --slices) may share OUT, each keeping the rows the others add")
    p.add_argument("--batch-per-chip", type=int, nargs="+", metavar="N",
                   help="--target tpu: compile only these per-chip batches, data parallel, on each of --slices "
                        "(will N fit?), instead of the matrix")
    p.add_argument("--largest-batch-slices", nargs="*", choices=list(TOPOLOGIES), default=None,
                   help="--target tpu: slices to search the largest per-chip batch on (default: the smallest and "
                        "the largest of --slices; none: skip the search)")
    a = p.parse_args(argv)
    target = a.target if a.target != "auto" else ("tpu" if libtpu_available() else "cpu")
    if a.target == "auto" and target == "cpu":
        print("libtpu is not installed: compiling for fake CPU devices (pip install -e '.[tpu]' for the TPU "
              "compiler's figures)", file=sys.stderr)
    if target == "tpu":
        if not libtpu_available():
            p.error("--target tpu needs libtpu (the TPU compiler): pip install -e '.[tpu]'")
        out = Path(a.out if a.out != p.get_default("out") else str(REPO / "docs" / "measurements" / "pod_compile_tpu"))
        out.parent.mkdir(parents=True, exist_ok=True)
        run = TpuRun(out, a.configs, a.slices, a.overrides, a.budget_min * 60, a.resume, a.largest_batch_slices)
        run.asked(a.batch_per_chip) if a.batch_per_chip else run.run()
        print(out.with_suffix(".md").read_text())
        return 0 if run.rows and all("error" not in r or r.get("fits") is False for r in run.rows) else 1
    if a.worker:
        # Before jax loads (nothing above imports it): the fake device count is read once, at start-up.
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = " ".join(
            [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
            + [f"--xla_force_host_platform_device_count={a.devices[0]}"])
        worker(a.devices[0], a.configs, a.jsonl, not a.full_opt, a.overrides)
        return 0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    jsonl.unlink(missing_ok=True)
    for n in a.devices:
        # The device count is fixed when jax loads its CPU backend: a fresh process per count.
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip())
        cmd = [sys.executable, __file__, "--worker", "--devices", str(n), "--jsonl", str(jsonl),
               "--configs", *a.configs] + (["--full-opt"] if a.full_opt else []) + [f"--set={o}" for o in a.overrides]
        rc = subprocess.call(cmd, env=env, cwd=REPO)
        if rc:
            print(f"worker for {n} devices exited with {rc}", file=sys.stderr)
    rows = [json.loads(ln) for ln in jsonl.read_text().splitlines()] if jsonl.exists() else []
    if a.merge and out.with_suffix(".json").exists():
        done = {_key(r) for r in rows}
        rows += [r for r in json.loads(out.with_suffix(".json").read_text())["rows"] if _key(r) not in done]
    order = list(CONFIGS)
    rows.sort(key=lambda r: (order.index(r["config"]) if r["config"] in order else len(order), r["devices"]))
    out.with_suffix(".json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    jsonl.unlink(missing_ok=True)
    print(table)
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
