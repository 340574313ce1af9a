#!/usr/bin/env bash
# One machine, all of its local devices (GPUs, TPU chips, or the CPU): build the data once, then train.
# Rerunning the same command resumes from the newest complete checkpoint in WORKDIR.
#
# Usage: launch/local.sh CONFIG WORKDIR PHOTOS_OR_DATA [--config.key=value ...]
#   PHOTOS_OR_DATA: a folder of ArrayRecord shards from `exif-jax build-data`, or a folder of photos
#   (then shards are built into WORKDIR/data first).
# Examples:
#   launch/local.sh configs/cpu_small.py /tmp/exif_small ../shared/data/photos
#   FAKE_CPU_DEVICES=8 launch/local.sh configs/tiny.py /tmp/tiny exif_jax/assets/photos   # sharding on a laptop
set -euo pipefail
if [[ $# -lt 3 ]]; then sed -n '2,12p' "$0"; exit 2; fi
config=$1 workdir=$2 src=$3
shift 3
exif_jax=${EXIF_JAX:-exif-jax}

if compgen -G "$src/*.array_record" > /dev/null; then
  data=$src
else
  data=$workdir/data
  # build-data is resumable: an interrupted build continues where it stopped.
  "$exif_jax" build-data --images "$src" --out "$data" --config "$config"
fi

if [[ -n "${FAKE_CPU_DEVICES:-}" ]]; then
  # N fake CPU devices: exercises the mesh and sharding code paths without accelerators.
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$FAKE_CPU_DEVICES ${XLA_FLAGS:-}"
elif command -v nvidia-smi > /dev/null; then
  # NVIDIA GPUs: the XLA flags in launch/xla_gpu_flags.txt (why each is there: that file), yours after them.
  export XLA_FLAGS="$(grep -o '^--[^ #]*' "$(dirname "$0")/xla_gpu_flags.txt" | tr '\n' ' ')${XLA_FLAGS:-}"
fi
exec "$exif_jax" train --config "$config" --workdir "$workdir" --config.data.train_dir="$data" "$@"
