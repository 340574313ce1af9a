#!/usr/bin/env bash
# A Cloud TPU pod slice (v4/v5e/v5p/v6e): one exif-jax process per TPU VM host, all started at once with
# `gcloud compute tpus tpu-vm ssh --worker=all`. jax.distributed.initialize() finds the other hosts from the
# TPU metadata (--distributed=on), and the mesh spans every chip of the slice.
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR DATA [--config.key=value ...]
#   WORKDIR and DATA must be the same path on every host: a gcsfuse mount of a bucket or a shared
#   filesystem (checkpoints are written by all hosts together; each host reads its own slice of DATA).
#   e.g. launch/tpu_pod.sh my-v5e-64 us-west4-a configs/vit_b16.py /mnt/gcs/runs/vit_b16 /mnt/gcs/yfcc_records \
#          --config.data.global_batch_size=8192 --config.optim.lr=2e-3
# One-time setup of every host (code + TPU jax + the bucket mount):
#   gcloud compute tpus tpu-vm scp --recurse --worker=all --zone "$ZONE" . "$TPU_NAME":~/exif-jax
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
#     'cd ~/exif-jax && python3 -m venv .venv && .venv/bin/pip install -e . "jax[tpu]==0.10.2" \
#      && mkdir -p /mnt/gcs && gcsfuse --implicit-dirs BUCKET /mnt/gcs'
# Preemption (spot/queued resources): the TPU runtime sends SIGTERM; jax's preemption service makes every
# host save the same step; rerun this script to resume.
set -euo pipefail
if [[ $# -lt 5 ]]; then sed -n '2,20p' "$0"; exit 2; fi
tpu=$1 zone=$2 config=$3 workdir=$4 data=$5
shift 5
extra=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/exif-jax && mkdir -p '$workdir' &&
  .venv/bin/exif-jax train --config '$config' --workdir '$workdir' --config.data.train_dir='$data' \
      --distributed=on $extra 2>&1 | tee -a '$workdir/log.\$(hostname).txt'"
