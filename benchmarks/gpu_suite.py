"""One prepared call that measures what matters on a GPU and picks the fastest correct step settings.

Stages, each in its own process with its own time budget (one that fails or overruns is recorded as such and
the next one runs; what it finished before is kept):
  vit_b16         configs/vit_b16.py's train step over a sweep of the step knobs (model.attention, remat,
                  model.norm_dtype, loss.impl, batch size), img/s and MFU, and the PyTorch peer (timm
                  ViT-B/16 + torch.compile, benchmarks/train_step.py) timed in the same process
  resnet50_paper  configs/resnet50_paper.py's train step, default and with cuDNN attention in its text tower
  localize        `exif-jax localize` on a 1-MP photo (embedding + consensus) with ViT-B/16 and ResNet-50
                  towers (random weights), first call (compiles included) and warm
  input           the input pipeline's crops/s: one process, and grain workers on every core
  flags           the default vit_b16 step again without launch/xla_gpu_flags.txt, and with each variant that
                  file lists, one process each (XLA reads its flags once per process), while time is left
A setting is correct when its first step's loss and gradient norm and its last step's loss (same weights, same
batch) equal the default's at that batch size within the tolerance of the compute dtype (JSON: "tolerance").
Writes gpu_suite_<card>_<date>.json and .md (device, versions, date, every row) to --out and prints the
fastest correct setting of each config as --config overrides, and the XLA flags that won.

The one-shot run for a session that is lent a GPU (the device tool; ~8 min of its 15). In the root of the
checkout the device tool sends (the session's own, not a helper's worktree):
  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 portpicker==1.6.0 tensorboardX==2.6.5
(setup.py's pins; portpicker is grain's own dependency; ~4.6 MB, checked 2026-12-01) then one `run` with carry
[".whl"] and timeout_s 600, command:
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
  export PYTHONPATH=/tmp/site && (python3 -m pip install -q --no-index --no-deps --no-build-isolation . ||
  echo "package not installed: the suite runs from the source tree") &&
  PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT
(The GPU image has jax, flax, optax, orbax, torch, timm, numpy, pillow, numba, absl, etils, protobuf; the
wheels are what it lacks. Versions there differ from setup.py's pins: the suite records them.) Then commit
the .json and .md from files_at under docs/measurements/ and set the defaults it found.

Without a GPU: `python benchmarks/gpu_suite.py --dry-run` runs every stage with tiny shapes on the CPU
(tests/test_gpu_suite.py runs it in `make test`).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS_FILE = ROOT / "launch" / "xla_gpu_flags.txt"
# (stage, seconds on a GPU, seconds in a dry run); "flags" gets what is left of --budget.
STAGES = (("vit_b16", 240, 60), ("resnet50_paper", 75, 30), ("localize", 75, 40), ("input", 45, 30),
          ("flags", None, None))
FLAGS_STAGE_MIN_S = (60, 15)  # (GPU, dry run): the flags stage starts only with this much left
VERSIONS = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
            "grain", "array-record", "ml-collections", "numpy", "torch", "timm", "pillow")
PROBE = ("import json, jax; d = jax.devices(); print('PROBE ' + json.dumps(dict(platform=d[0].platform, "
         "kind=d[0].device_kind, count=len(d))))")


def read_flags(path: Path = FLAGS_FILE) -> tuple[list[str], list[str]]:
    """(flags the launch scripts set, variants the suite measures) from launch/xla_gpu_flags.txt."""
    text = path.read_text()
    flags = re.findall(r"^(--\S+)", text, re.M)
    variants = re.findall(r"^#\s+(--xla\S+)", text, re.M)
    return flags, variants


def probe(flags: list[str]) -> tuple[dict | None, list[str], str]:
    """(device info, unknown flags among `flags`, error) from a process started with them in XLA_FLAGS."""
    env = {**os.environ, "XLA_FLAGS": " ".join(flags + [os.environ.get("XLA_FLAGS", "")]).strip()}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    unknown = re.search(r"Unknown flags in XLA_FLAGS: (.*)", out.stderr)
    bad = [f for f in (unknown.group(1).split() if unknown else []) if f in flags]
    info = next((json.loads(line[6:]) for line in out.stdout.splitlines() if line.startswith("PROBE ")), None)
    return info, bad, "" if info else (out.stderr.strip().splitlines() or ["no output"])[-1]


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing imported)."""
    out = {"python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def run_stage(name: str, timeout: float, env: dict[str, str], args: argparse.Namespace, log) -> dict:
    """Run one stage in a child process; its result (rows so far) with status ok / failed / timeout."""
    fd, result_path = tempfile.mkstemp(prefix=f"gpu_suite_{name}_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).with_name("gpu_suite_stages.py")), name, "--result", result_path,
           "--deadline", str(time.time() + timeout - 5), "--parallel-compiles", str(args.parallel_compiles)]
    if args.dry_run:
        cmd.append("--dry-run")
    t0, cpu0 = time.time(), _children_cpu()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: grain workers go with it

    def pump():
        for line in proc.stdout:
            log.write(f"[{name}] {line}")
            if line.startswith("gpu_suite"):
                print(f"  {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status, rc = "timeout", None
    reader.join(timeout=5)
    try:
        result = json.loads(Path(result_path).read_text() or "{}")
    except json.JSONDecodeError:
        result = {}
    os.unlink(result_path)
    result.update(status=status if result.get("status") != "failed" else "failed", returncode=rc,
                  seconds=round(time.time() - t0, 1), cpu_s=round(_children_cpu() - cpu0, 1), budget_s=round(timeout))
    if status == "timeout":
        result["error"] = f"stopped at its {timeout:.0f} s budget; rows it finished are kept"
    elif rc and not result.get("error"):
        result["error"] = f"exit code {rc} (log: the .log beside the JSON)"
    return result


def _children_cpu() -> float:
    """CPU seconds of the finished child processes so far (user + system)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def best_setting(rows: list[dict]) -> dict | None:
    """The fastest correct row of ours (the default counts as correct)."""
    ok = [r for r in rows if r.get("kind") == "ours" and r.get("status") == "ok" and r.get("correct")]
    return max(ok, key=lambda r: r["img_s"]) if ok else None


def main() -> int:
    """Run the stages, write the JSON and markdown, print the fastest correct settings."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default=None, help="folder for the JSON, markdown and log (default "
                    "docs/measurements/; with --dry-run a temporary folder)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks every stage runs")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 470; dry run 170)")
    ap.add_argument("--stages", default=",".join(s for s, _, _ in STAGES), help="comma-separated subset")
    ap.add_argument("--parallel-compiles", type=int, default=None,
                    help="train steps compiled at once (default 4 on a GPU, 2 in a dry run)")
    args = ap.parse_args()
    args.parallel_compiles = args.parallel_compiles or (2 if args.dry_run else 4)
    budget = args.budget or (170.0 if args.dry_run else 470.0)
    deadline = time.time() + budget
    out = Path(args.out or (tempfile.mkdtemp(prefix="gpu_suite_dry_run_") if args.dry_run
                            else ROOT / "docs" / "measurements"))
    out.mkdir(parents=True, exist_ok=True)

    # XLA aborts on a flag it does not know: probe once, drop the unknown ones (flags change between releases).
    flags, variants = read_flags()
    info, bad, err = probe(flags + variants)
    if info is None and not bad:
        print(f"gpu_suite: jax does not start here ({err})", file=sys.stderr)
        return 2
    if bad:
        info, _, err = probe([f for f in flags + variants if f not in bad])
        if info is None:
            print(f"gpu_suite: jax does not start here ({err})", file=sys.stderr)
            return 2
    flags, variants = [f for f in flags if f not in bad], [f for f in variants if f not in bad]
    if info["platform"] != "gpu" and not args.dry_run:
        print(f"gpu_suite: no GPU here (jax sees {info['count']} x {info['kind']}); --dry-run checks the stages "
              "on the CPU with tiny shapes", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.timezone.utc)
    card = "dry-run" if args.dry_run else re.sub(r"[^A-Za-z0-9]+", "-", info["kind"]).strip("-")
    stem = out / f"gpu_suite_{card}_{now:%Y-%m-%d}"
    report = {"suite": "benchmarks/gpu_suite.py", "date": now.isoformat(timespec="seconds"), "dry_run": args.dry_run,
              "device": info, "host_cores": os.cpu_count(), "versions": versions(),
              "xla_flags": {"applied": flags, "variants": variants, "dropped_unknown": bad,
                            "inherited": os.environ.get("XLA_FLAGS", "")},
              "budget_s": budget, "stages": {}}
    v = report["versions"]
    print(f"gpu_suite: {info['count']} x {info['kind']} ({info['platform']}); jax {v['jax']}, flax {v['flax']}, "
          f"torch {v['torch']}, timm {v['timm']}; XLA flags {' '.join(flags) or 'none'}"
          f"{'; dropped (unknown to this XLA): ' + ' '.join(bad) if bad else ''}", flush=True)

    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).strip(
        os.pathsep), "PYTHONUNBUFFERED": "1"}
    with_flags = {**base_env, "XLA_FLAGS": " ".join(flags + [os.environ.get("XLA_FLAGS", "")]).strip()}
    wanted = args.stages.split(",")
    with open(f"{stem}.log", "w") as log:
        for name, gpu_s, dry_s in STAGES:
            if name not in wanted:
                continue
            left = deadline - time.time()
            if name == "flags":
                report["stages"]["flags"] = run_flag_variants(flags, variants, base_env, args, log, deadline)
                continue
            cap = dry_s if args.dry_run else gpu_s
            if left < 10:
                report["stages"][name] = {"status": "skipped", "error": "no time left in --budget", "rows": []}
                continue
            env = dict(with_flags)
            if name == "vit_b16" and not args.dry_run:
                # jax takes 75% of the card by default; the PyTorch peer in the same process needs room.
                env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.55")
            print(f"gpu_suite: stage {name} (budget {min(cap, left):.0f} s)", flush=True)
            report["stages"][name] = run_stage(name, min(cap, left), env, args, log)
            st = report["stages"][name]
            print(f"gpu_suite: stage {name}: {st['status']} in {st['seconds']} s ({st['cpu_s']} CPU s)", flush=True)

    report["best"] = {}
    for name in ("vit_b16", "resnet50_paper"):
        row = best_setting(report["stages"].get(name, {}).get("rows", []))
        if row:
            report["best"][name] = {k: row[k] for k in ("setting", "overrides", "img_s", "mfu")}
            report["best"][name]["config"] = report["stages"][name].get("config", f"configs/{name}.py")
    report["best"]["xla_flags"] = best_flags(report)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    Path(f"{stem}.md").write_text(markdown(report))
    for name, best in report["best"].items():
        if name == "xla_flags":
            print(f"gpu_suite: XLA flags: {best}")
        else:
            print(f"gpu_suite: fastest correct {name}: {best['img_s']:,.0f} img/s: {best['config']} "
                  f"{' '.join('--config.' + o for o in best['overrides']) or '(the defaults)'}")
    print(f"gpu_suite: wrote {stem}.json, {stem}.md, {stem}.log")
    return 0 if all(s.get("status") in ("ok", "skipped") for s in report["stages"].values()) else 1


def run_flag_variants(flags: list[str], variants: list[str], base_env: dict, args, log, deadline: float) -> dict:
    """The flags stage: the default vit_b16 step per XLA flag set, one process each, while time is left."""
    sets = [("without the launch flags", [])] + [(f"launch flags + {v}", flags + [v]) for v in variants]
    if args.dry_run:
        sets = sets[:1]
    rows, notes = [], []
    need = FLAGS_STAGE_MIN_S[1 if args.dry_run else 0]
    for label, fl in sets:
        left = deadline - time.time()
        if left < need:
            notes.append(f"not run for lack of time ({left:.0f} s left, {need} s needed): {label}")
            continue
        env = {**base_env, "XLA_FLAGS": " ".join(fl + [os.environ.get("XLA_FLAGS", "")]).strip(),
               "GPU_SUITE_FLAGS_LABEL": label}
        print(f"gpu_suite: stage flags: {label} (budget {min(left, 150):.0f} s)", flush=True)
        res = run_stage("flags", min(left, 150), env, args, log)
        got = res.get("rows") or [{"setting": "default", "status": res["status"], "error": res.get("error")}]
        for r in got:
            rows.append({**r, "kind": "flags", "flags": label, "status": r.get("status", res["status"])})
    return {"status": "ok" if rows or notes else "skipped", "rows": rows, "notes": notes}


def best_flags(report: dict) -> str:
    """Which XLA flag set gave the fastest default vit_b16 step (the suite's flags unless a variant won by 2%)."""
    default = next((r for r in report["stages"].get("vit_b16", {}).get("rows", [])
                    if r.get("kind") == "ours" and r.get("status") == "ok" and not r["overrides"]), None)
    runs = [r for r in report["stages"].get("flags", {}).get("rows", []) if r.get("status") == "ok"]
    if not default or not runs:
        return "not compared (the flags stage or the default vit_b16 row is missing)"
    top = max(runs, key=lambda r: r["img_s"])
    if top["img_s"] > 1.02 * default["img_s"]:
        return f"{top['flags']}: {top['img_s']:,.0f} img/s vs {default['img_s']:,.0f} with launch/xla_gpu_flags.txt"
    return f"launch/xla_gpu_flags.txt as is ({default['img_s']:,.0f} img/s; best other: {top['flags']}, " \
           f"{top['img_s']:,.0f})"


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def _cell(x) -> str:
    """A table cell: floats to 3 significant digits (thousands whole, with commas), None as '-'."""
    if isinstance(x, float):
        return _fmt(x, ",.0f" if abs(x) >= 1000 else ".3g")
    return "-" if x is None else str(x)


def markdown(report: dict) -> str:
    """The report as markdown tables: one per stage, then the fastest correct settings."""
    d, v = report["device"], report["versions"]
    dropped = report["xla_flags"]["dropped_unknown"]
    lines = [f"# GPU suite{' (dry run: tiny shapes on the CPU)' if report['dry_run'] else ''}: "
             f"{d['count']} x {d['kind']}, {report['date']}", "",
             f"jax {v['jax']} (jaxlib {v['jaxlib']}), flax {v['flax']}, optax {v['optax']}, torch {v['torch']}, "
             f"timm {v['timm']}, numpy {v['numpy']}, Python {v['python']}; {report['host_cores']} host cores.",
             f"XLA flags: {' '.join(report['xla_flags']['applied']) or 'none'}"
             f"{'; dropped as unknown: ' + ' '.join(dropped) if dropped else ''}.",
             ""]
    for name, st in report["stages"].items():
        took = f" ({st['seconds']} s of {st['budget_s']})" if "seconds" in st else ""
        lines += [f"## {name}: {st.get('status')}{took}", ""]
        if st.get("error"):
            lines += [f"Error: {st['error']}", ""]
        lines += [f"- {n}" for n in st.get("notes", [])] + ([""] if st.get("notes") else [])
        rows = st.get("rows", [])
        if name in ("vit_b16", "resnet50_paper", "flags") and rows:
            lines += ["| setting | batch | status | compile s | s/step | img/s | MFU | loss (first, last) | grad norm "
                      "| correct |",
                      "|---|---:|---|---:|---:|---:|---:|---|---:|---|"]
            for r in rows:
                label = r.get("setting", "") + (f" [{r['flags']}]" if r.get("flags") else "")
                why = f": {r['error']}" if r.get("error") else ""
                lines.append(
                    f"| {label} | {r.get('batch', '-')} | {r.get('status')}{why} | {_fmt(r.get('compile_s'), '.1f')} | "
                    f"{_fmt(r.get('sec'), '.4f')} | {_fmt(r.get('img_s'))} | {_fmt(r.get('mfu'), '.3f')} | "
                    f"{_fmt(r.get('first_loss'), '.5f')}, {_fmt(r.get('last_loss'), '.5f')} | "
                    f"{_fmt(r.get('first_grad_norm'), '.4f')} | {r.get('correct', '-')} |")
        elif rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for r in rows:
                lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
        lines.append("")
    lines += ["## Fastest correct settings", ""]
    for name, best in report.get("best", {}).items():
        if name == "xla_flags":
            lines.append(f"- XLA flags: {best}")
        else:
            lines.append(f"- {name}: {best['img_s']:,.0f} img/s (MFU {_fmt(best['mfu'], '.3f')}): `{best['config']}` "
                         f"`{' '.join('--config.' + o for o in best['overrides']) or 'the defaults'}`")
    tol = report["stages"].get("vit_b16", {}).get("tolerance")
    if tol:
        lines += ["", f"Correct: first loss, first gradient norm and last loss within {tol} (relative) of the "
                      "default at the same batch size, same weights and batch."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
