#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm_up.sh.
# Order: slurmd -> slurmctld -> slurmdbd -> (mariadb, munged: only if slurm_up.sh started them).
# Idempotent: stopping an already stopped cluster is a no-op that exits 0.
#
# Running job steps (slurmstepd) are NOT killed: slurmctld keeps its state in
# /var/lib/slurm/slurmctld and re-attaches to them on the next slurm_up.sh.
# To get rid of jobs first:  scancel --user=root   (or scancel <jobid>).
set -uo pipefail

[ "$(id -u)" -eq 0 ] || { echo "slurm_down: must run as root" >&2; exit 1; }
RUN_DIR=/run/slurm
MARK_DIR=/run/pkd-slurm

# stop NAME PIDFILE EXE : SIGTERM the pid in PIDFILE if it is a live EXE, wait, then SIGKILL.
stop() {
  local name=$1 pidfile=$2 exe pid i
  exe=$(readlink -f "$3")   # /usr/sbin/slurmd -> slurmd-wlm (alternatives)
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -z "$pid" ] || [ ! -d "/proc/$pid" ] || [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" != "$exe" ]; then
    # No usable pid file: look for the daemon by its exact executable (not by name pattern).
    pid=""
    for p in $(pgrep -x "$(basename "$3")" 2>/dev/null); do
      [ "$(readlink -f "/proc/$p/exe" 2>/dev/null)" = "$exe" ] && pid="$pid $p"
    done
  fi
  pid=$(echo $pid)
  if [ -z "$pid" ]; then echo "slurm_down: $name not running"; rm -f "$pidfile"; return 0; fi
  # shellcheck disable=SC2086
  kill -TERM $pid 2>/dev/null || true
  for i in $(seq 1 100); do   # up to 20 s
    local alive=0
    for p in $pid; do [ -d "/proc/$p" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for p in $pid; do
    if [ -d "/proc/$p" ]; then echo "slurm_down: $name ($p) ignored SIGTERM, sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  rm -f "$pidfile"
  echo "slurm_down: stopped $name ($pid)"
}

stop slurmd    $RUN_DIR/slurmd.pid    /usr/sbin/slurmd
stop slurmctld $RUN_DIR/slurmctld.pid /usr/sbin/slurmctld
stop slurmdbd  $RUN_DIR/slurmdbd.pid  /usr/sbin/slurmdbd

if [ -e $MARK_DIR/started-mariadb ]; then
  stop mariadb /run/mysqld/mysqld.pid /usr/sbin/mariadbd && rm -f $MARK_DIR/started-mariadb
else
  echo "slurm_down: mariadb not started by slurm_up.sh, leaving it alone"
fi
if [ -e $MARK_DIR/started-munged ]; then
  stop munged /run/munge/munged.pid /usr/sbin/munged && rm -f $MARK_DIR/started-munged
else
  echo "slurm_down: munged not started by slurm_up.sh, leaving it alone"
fi
exit 0
