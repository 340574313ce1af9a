#!/usr/bin/env bash
# A Cloud TPU pod slice (v4/v5e/v5p/v6e): one exif-jax process per TPU VM host, started detached on every host
# (it outlives this script and the ssh sessions). jax.distributed.initialize() finds the other hosts from the
# TPU metadata (--distributed=on), and the mesh spans every chip of the slice.
#
# Usage: launch/tpu_pod.sh [--dry-run] [start|status|stop] TPU_NAME ZONE [CONFIG WORKDIR DATA [--config.key=value ...]]
#   start (the default): copy this checkout's code to every host, set up its venv where it is not set up yet
#     (`pip install -e '.[tpu]'`: TPU jax; a recreated spot / queued-resource slice gets the full setup), and
#     start the trainer on every host where it is not already running; it resumes from WORKDIR's newest
#     checkpoint. Re-running the same command is safe: running hosts are left alone.
#   status: each host's state and its log's last lines.   stop: SIGTERM, so every host saves the same step.
#   --dry-run: print every command (gcloud and local) instead of running it.
#   WORKDIR and DATA: gs://bucket/... (or s3://...) URIs, passed to the trainer unchanged (it reads and writes
#     object storage itself; no FUSE mount), or a path every host sees (NFS).
#   Logs: WORKDIR/logs/train.HOST.log (for a bucket: written on the host, copied to train.HOST.TIME.log each minute).
#   e.g. launch/tpu_pod.sh my-v5e-64 us-west4-a configs/vit_b16.py gs://bkt/runs/vit_b16 gs://bkt/yfcc_records \
#          --config.data.global_batch_size=8192 --config.optim.lr=2e-3
# Extra gcloud flags (e.g. --project P): EXIF_JAX_GCLOUD_FLAGS. Preemption: the TPU runtime sends SIGTERM, jax's
# preemption service makes every host save the same step; recreate the slice and rerun this script to resume.
set -euo pipefail
dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
action=start
case ${1:-} in start|status|stop) action=$1; shift ;; esac
if [[ $# -lt 2 || ( $action == start && $# -lt 5 ) ]]; then awk 'NR > 1 && /^#/ && !/^#SBATCH/ {print; next} NR > 1 {exit}' "$0"; exit 2; fi
tpu=$1 zone=$2
shift 2
read -r -a gflags <<< "${EXIF_JAX_GCLOUD_FLAGS:-}"

q() {  # one word as a shell reads it back: bare when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

run() {  # print a command (--dry-run), copy-pasteable, or run it
  if [[ $dry == 1 ]]; then
    local w out=
    for w in "$@"; do out+="$(q "$w") "; done
    echo "${out% }"
  else
    "$@"
  fi
}

on_all_hosts() {  # a command line, run by bash on every host of the slice
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all "${gflags[@]}" --command "$1"
}

if [[ $action != start ]]; then
  on_all_hosts "bash ~/exif-jax/launch/tpu_host.sh $action"
  exit
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=${TMPDIR:-/tmp}/exif-jax-$tpu.tar.gz
# The checkout as git sees it (committed or not, ignored files such as .venv left out).
run bash -c "cd $(q "$repo") && git ls-files -co --exclude-standard -z | tar czf $(q "$tarball") --null -T -"
run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:exif-jax.tar.gz" --zone "$zone" --worker=all "${gflags[@]}"
# CONFIG WORKDIR DATA and the overrides travel quoted, as given: a gs:// URI reaches the trainer unchanged.
on_all_hosts "rm -rf ~/exif-jax.new && mkdir -p ~/exif-jax.new && tar xzf ~/exif-jax.tar.gz -C ~/exif-jax.new \
&& bash ~/exif-jax.new/launch/tpu_host.sh start$(printf ' %q' "$@")"
if [[ $dry == 0 ]]; then
  rm -f "$tarball"
  echo "started; follow it with: launch/tpu_pod.sh status $tpu $zone"
fi
