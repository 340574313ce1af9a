#!/usr/bin/env bash
# One TPU VM host's side of launch/tpu_pod.sh (which copies the code to ~/exif-jax.new on every host and runs
# this there). Not meant to be run by hand, but safe to:
#
#   bash tpu_host.sh start CONFIG WORKDIR DATA [--config.key=value ...]
#       - if this host's trainer is still running: say so and do nothing (re-running the launcher is safe);
#       - else put the new code in place (~/exif-jax, its .venv kept), set up the venv unless it is already
#         set up for this setup.py (a recreated slice's fresh hosts get the full setup), and start the
#         trainer detached (setsid nohup: it outlives the ssh session), resuming from WORKDIR's newest
#         checkpoint, as the trainer always does.
#   bash tpu_host.sh status      whether the trainer runs, and the log's last lines
#   bash tpu_host.sh stop        SIGTERM: every host saves the same step and exits (jax's preemption service)
#
# Logs: WORKDIR/logs/train.HOST.log. A WORKDIR in object storage (gs://, s3://) cannot be appended to, so each
# start's log is written to ~/exif-jax-logs/train.TIME.log and copied whole to WORKDIR/logs/train.HOST.TIME.log
# with `gcloud storage cp` every EXIF_JAX_LOG_SYNC_S seconds (60) and once the trainer has exited (gcloud
# writes s3:// too, given AWS credentials). Environment: EXIF_JAX_EXTRAS (pip extras, default tpu,cloud: the TPU runtime and the gs:// + s3:// clients), EXIF_JAX_HOST (the log's host name;
# default hostname).
set -euo pipefail
action=${1:-}
shift || true
code=$HOME/exif-jax
new=$HOME/exif-jax.new
state=$HOME/exif-jax-run
host=${EXIF_JAX_HOST:-$(hostname)}
mkdir -p "$state"

detached() {  # wait (<= 5 s) until process $1 leads its own session: only then may the ssh session end
  local i
  for i in $(seq 50); do
    [[ $(ps -o sid= -p "$1" 2> /dev/null | tr -d ' ') == "$1" ]] && return
    sleep 0.1
  done
  echo "$host: process $1 did not detach from the ssh session" >&2
  return 1
}

running() {  # the pid file's process is alive (not a zombie) and is a trainer (not a reused pid, after a reboot)
  [[ -f $state/pid ]] || return 1
  local pid stat
  pid=$(cat "$state/pid")
  stat=$(ps -o stat= -p "$pid" 2> /dev/null) || return 1
  [[ $stat != Z* ]] && ps -o args= -p "$pid" | grep -q 'exif[-_]jax'
}

setup() {
  # The code: the copy the launcher just unpacked, over the old one; the venv stays.
  if [[ -d $new ]]; then
    mkdir -p "$code"
    find "$code" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
    cp -a "$new/." "$code/"
    rm -rf "$new"
  fi
  [[ -f $code/setup.py ]] || { echo "$host: no code in $code (run launch/tpu_pod.sh, which copies it)" >&2; exit 1; }
  local stamp
  stamp=$code/.venv/.installed-$(sha1sum "$code/setup.py" | cut -c1-12)-${EXIF_JAX_EXTRAS:-tpu,cloud}
  if [[ -f $stamp ]]; then
    echo "$host: venv already set up for this setup.py"
    return
  fi
  echo "$host: setting up $code/.venv"
  [[ -x $code/.venv/bin/python ]] || python3 -m venv "$code/.venv"
  (cd "$code" && .venv/bin/pip install -q -e ".[${EXIF_JAX_EXTRAS:-tpu,cloud}]")
  touch "$stamp"
}

start() {
  if [[ $# -lt 3 ]]; then echo "usage: tpu_host.sh start CONFIG WORKDIR DATA [--config.key=value ...]" >&2; exit 2; fi
  local config=$1 workdir=$2 data=$3
  shift 3
  if running; then
    echo "$host: the trainer is still running (pid $(cat "$state/pid")): not started again"
    rm -rf "$new"
    return
  fi
  setup
  local log remote=
  if [[ $workdir == *://* ]]; then
    # Object storage: the trainer writes checkpoints and metrics there itself; the log is copied. One log per
    # start, named by its time: a recreated slice's fresh disk must not overwrite the last slice's log.
    local started
    started=$(date -u +%Y%m%dT%H%M%SZ)
    remote=${workdir%/}/logs/train.$host.$started.log
    mkdir -p "$HOME/exif-jax-logs"
    log=$HOME/exif-jax-logs/train.$started.log
  else
    mkdir -p "$workdir/logs"
    log=$workdir/logs/train.$host.log
  fi
  local cmd
  cmd=$(printf '%q ' "$code/.venv/bin/exif-jax" train --config "$config" --workdir "$workdir" \
    --config.data.train_dir="$data" --distributed=on "$@")
  echo "$(date -u +%FT%TZ) $host: starting: $cmd" >> "$log"
  # setsid + nohup: a new session, so the end of the ssh session (SIGHUP to its process group) passes it by.
  # `exec` makes the pid in $state/pid the trainer's own, which `stop` signals.
  cd "$code"
  setsid nohup bash -c "exec $cmd" >> "$log" 2>&1 < /dev/null &
  echo $! > "$state/pid"
  detached $!
  printf '%s\n' "$log" > "$state/log"
  if [[ -n $remote ]]; then
    local pid
    pid=$(cat "$state/pid")
    local copy
    copy="gcloud storage cp -q $(printf '%q %q' "$log" "$remote")"
    # Checks every second whether the trainer is gone, so the last copy follows its exit at once.
    setsid nohup bash -c "n=0; $copy
      while ps -o stat= -p $pid 2> /dev/null | grep -qv '^Z'; do sleep 1; n=\$((n + 1))
        if (( n >= ${EXIF_JAX_LOG_SYNC_S:-60} )); then $copy || true; n=0; fi; done
      $copy" > "$state/sync.log" 2>&1 < /dev/null &
    echo $! > "$state/sync.pid"
    detached $!
  fi
  echo "$host: trainer started (pid $(cat "$state/pid")), log $log${remote:+, copied to $remote}"
}

case $action in
  start) start "$@" ;;
  status)
    if running; then echo "$host: running (pid $(cat "$state/pid"))"; else echo "$host: not running"; fi
    if [[ -f $state/log ]]; then tail -n "${EXIF_JAX_TAIL:-5}" "$(cat "$state/log")" || true; fi ;;
  stop)
    if running; then kill -TERM "$(cat "$state/pid")"; echo "$host: SIGTERM sent: it saves and exits"
    else echo "$host: not running"; fi ;;
  *) awk 'NR > 1 && /^#/ && !/^#SBATCH/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
esac
