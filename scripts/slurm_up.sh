#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, without systemd.
#
#   bash scripts/slurm_up.sh            # install (if needed), configure, start, wait until usable
#
# Idempotent: if the cluster is already up (daemons alive, node usable, sacct
# answers) it exits 0 at once without touching anything.
# Starts, in order: mariadb -> munged -> slurmdbd -> slurmctld -> slurmd.
# Stop with scripts/slurm_down.sh.  See scripts/SLURM.md.
#
# Environment knobs (all optional):
#   SLURM_UP_TIMEOUT   seconds to wait for each daemon / the node   (default 60)
#   SLURM_CLUSTER_NAME cluster name                                  (default pkd)
#   SLURM_PARTITION    partition name                                (default debug)
#   SLURM_ACCOUNT      default account created for root              (default pkd)
#   SLURM_MEM_HEADROOM_MB memory kept out of RealMemory              (default max(1024, 10% of RAM))
set -euo pipefail

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[slurm_up +$(elapsed)s] $*"; }
die() { echo "[slurm_up +$(elapsed)s] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CLUSTER=${SLURM_CLUSTER_NAME:-pkd}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNT=${SLURM_ACCOUNT:-pkd}
HOST=$(hostname -s)

CONF_DIR=/etc/slurm
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
DBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm                # pid files (tmpfs: recreated each boot)
MARK_DIR=/run/pkd-slurm           # markers: which daemons this script started
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
MYSQL_CNF=/etc/mysql/mariadb.conf.d/90-pkd-slurm.cnf
MARIADB_LOG=$LOG_DIR/mariadb.log
MUNGE_LOG=/var/log/munge/munged.log
DB_NAME=slurm_acct_db
DB_USER=slurm
export SLURM_CONF=$SLURM_CONF_FILE   # also the compiled-in default on Debian

# ---------------------------------------------------------------- helpers
pid_alive() {  # pid_alive PIDFILE EXE  -> 0 if the pid in PIDFILE is a live EXE
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # /usr/sbin/slurmctld etc. are alternatives symlinks to *-wlm binaries: resolve both sides
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$2")" ]
}
munge_ok()    { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mariadb_ok()  { command -v mysqladmin >/dev/null && mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
dbd_ok()      { timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
ctld_ok()     { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state()  { timeout 10 sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n1; }
node_usable() { case "$(node_state)" in idle|mix|mixed|alloc|comp) return 0;; *) return 1;; esac; }
sacct_ok()    { timeout 10 sacct -n -X -S now-1minute >/dev/null 2>&1; }

fail_with_log() {  # fail_with_log LOGFILE MESSAGE
  echo "----- last lines of $1 -----" >&2
  tail -n 25 "$1" >&2 2>/dev/null || true
  echo "-----" >&2
  die "$2; see $1"
}

wait_for() {  # wait_for "what" LOGFILE CMD...   (WATCH_PID="PIDFILE EXE": fail fast if it dies)
  local what=$1 logf=$2; shift 2
  local start; start=$(date +%s)
  local end=$(( start + TIMEOUT ))
  until "$@"; do
    # shellcheck disable=SC2086
    if [ -n "${WATCH_PID:-}" ] && [ $(( $(date +%s) - start )) -ge 3 ] && ! pid_alive $WATCH_PID; then
      fail_with_log "$logf" "$what: daemon exited during startup"
    fi
    [ "$(date +%s)" -lt "$end" ] || fail_with_log "$logf" "$what not ready after ${TIMEOUT}s"
    sleep 0.5
  done
  log "$what ready"
}

cluster_healthy() {
  [ -f "$SLURM_CONF_FILE" ] && command -v sinfo >/dev/null || return 1
  pid_alive $RUN_DIR/slurmctld.pid /usr/sbin/slurmctld || return 1
  pid_alive $RUN_DIR/slurmd.pid /usr/sbin/slurmd || return 1
  pid_alive $RUN_DIR/slurmdbd.pid /usr/sbin/slurmdbd || return 1
  node_usable && sacct_ok
}

if cluster_healthy; then
  log "cluster already running (node $HOST: $(node_state)); nothing to do. elapsed $(elapsed)s"
  exit 0
fi

# ---------------------------------------------------------------- install
PKGS="munge slurmctld slurmd slurmdbd slurm-client mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' postinst from trying to start services (no init system here).
  # Only add a policy-rc.d if none exists, and only remove the one we added.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1
  fi
  # shellcheck disable=SC2086
  if ! apt-get install -y --no-install-recommends $missing >/tmp/slurm_up-apt.log 2>&1; then
    apt-get update >>/tmp/slurm_up-apt.log 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing >>/tmp/slurm_up-apt.log 2>&1 \
      || { [ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed; see /tmp/slurm_up-apt.log"; }
  fi
  if [ $added_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "packages installed"
fi

# ---------------------------------------------------------------- dirs, keys
getent passwd slurm >/dev/null || die "user 'slurm' missing (package install incomplete?)"
install -d -o slurm -g slurm -m 755 $LOG_DIR $RUN_DIR /var/lib/slurm $STATE_DIR
install -d -o root -g root -m 755 $SPOOL_DIR $MARK_DIR   # slurmd runs as root
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 711 /var/lib/munge
install -d -o mysql -g root -m 755 /run/mysqld
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key

# ---------------------------------------------------------------- configs
write_if_changed() {  # write_if_changed DEST MODE OWNER  (content on stdin)
  local tmp; tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; CONF_CHANGED=1; fi
  chmod "$2" "$1"; chown "$3" "$1"
}
CONF_CHANGED=0

# CPUs the node offers: not nproc's answer under OMP_NUM_THREADS=1 (which it honours), or a test run with it
# set would configure a 1-CPU node.
NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM_MB=$(free -m | awk '/^Mem:/{print $2}')
HEADROOM=${SLURM_MEM_HEADROOM_MB:-$(( MEM_MB / 10 > 1024 ? MEM_MB / 10 : 1024 ))}
REAL_MEM=$(( MEM_MB - HEADROOM ))
[ "$REAL_MEM" -gt 512 ] || die "too little memory: total ${MEM_MB}MB, headroom ${HEADROOM}MB"

write_if_changed $SLURM_CONF_FILE 644 root:root <<EOF
# Generated by pkd-harness scripts/slurm_up.sh -- edits are overwritten.
# Single-node cluster on host '$HOST'. No systemd, no cgroup plugins.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s). 30 s keeps requeue/resume tests short.
AuthInfo=cred_expire=30
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
# No cgroups: process tracking through /proc parentage, no CPU binding/memory fencing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# Accounting through slurmdbd (MariaDB). Associations exist but are not enforced.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
# Scheduling: several 1-CPU tasks per node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without this, a job with no --mem would get the whole node's memory.
DefMemPerCPU=1024
JobRequeue=1
ReturnToService=2
MaxArraySize=10001
MinJobAge=300
KillWait=30
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# DB password: keep the one already in slurmdbd.conf, else make one.
DB_PASS=""
[ -f $DBD_CONF_FILE ] && DB_PASS=$(sed -n 's/^StoragePass=//p' $DBD_CONF_FILE | head -n1)
[ -n "$DB_PASS" ] || DB_PASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

write_if_changed $DBD_CONF_FILE 600 slurm:slurm <<EOF
# Generated by pkd-harness scripts/slurm_up.sh -- edits are overwritten (password is kept).
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF

# Settings slurmdbd recommends for InnoDB (it logs a warning otherwise).
write_if_changed $MYSQL_CNF 644 root:root <<EOF
# Added by pkd-harness scripts/slurm_up.sh for slurmdbd.
[mysqld]
innodb_buffer_pool_size=1024M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF

# ---------------------------------------------------------------- mariadb
if mariadb_ok; then
  log "mariadb already running"
else
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising MariaDB data dir"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/slurm_up-mariadb-install.log 2>&1 \
      || die "mariadb-install-db failed; see /tmp/slurm_up-mariadb-install.log"
  fi
  touch $MARIADB_LOG; chown mysql:mysql $MARIADB_LOG
  log "starting mariadb (log: $MARIADB_LOG)"
  setsid nohup /usr/sbin/mariadbd --user=mysql --log-error=$MARIADB_LOG \
    --pid-file=/run/mysqld/mysqld.pid </dev/null >>$MARIADB_LOG 2>&1 &
  touch $MARK_DIR/started-mariadb
  wait_for mariadb $MARIADB_LOG mariadb_ok
fi
mysql --batch <<EOF || die "could not create slurm database/user in MariaDB; see $MARIADB_LOG"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF

# ---------------------------------------------------------------- munge
if munge_ok; then
  log "munged already running"
else
  log "starting munged (log: $MUNGE_LOG)"
  runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || true
  touch $MARK_DIR/started-munged
  wait_for munged $MUNGE_LOG munge_ok
fi

# ---------------------------------------------------------------- slurmdbd
if pid_alive $RUN_DIR/slurmdbd.pid /usr/sbin/slurmdbd; then
  log "slurmdbd already running"
else
  log "starting slurmdbd (log: $LOG_DIR/slurmdbd.log)"
  /usr/sbin/slurmdbd || die "slurmdbd failed to start; see $LOG_DIR/slurmdbd.log"
fi
WATCH_PID="$RUN_DIR/slurmdbd.pid /usr/sbin/slurmdbd" wait_for slurmdbd $LOG_DIR/slurmdbd.log dbd_ok

# The cluster must exist in the DB before slurmctld registers.
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
  log "registered cluster $CLUSTER in slurmdbd"
fi

# ---------------------------------------------------------------- slurmctld
if pid_alive $RUN_DIR/slurmctld.pid /usr/sbin/slurmctld; then
  log "slurmctld already running"
  if [ $CONF_CHANGED = 1 ]; then log "config changed: scontrol reconfigure"; scontrol reconfigure || true; fi
else
  log "starting slurmctld (log: $LOG_DIR/slurmctld.log)"
  /usr/sbin/slurmctld || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
fi
WATCH_PID="$RUN_DIR/slurmctld.pid /usr/sbin/slurmctld" wait_for slurmctld $LOG_DIR/slurmctld.log ctld_ok

# ---------------------------------------------------------------- slurmd
if pid_alive $RUN_DIR/slurmd.pid /usr/sbin/slurmd; then
  log "slurmd already running"
else
  SLURMD_T0=$(( $(date +%s) - 1 ))
  log "starting slurmd (log: $LOG_DIR/slurmd.log)"
  /usr/sbin/slurmd || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
  # slurmctld restores the node state from its state file, so the node may look
  # idle before this slurmd registered: wait until SlurmdStartTime is fresh.
  slurmd_registered() {
    local t
    t=$(timeout 10 scontrol show node "$HOST" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
    [ -n "$t" ] && [ "$t" != "None" ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge "$SLURMD_T0" ]
  }
  WATCH_PID="$RUN_DIR/slurmd.pid /usr/sbin/slurmd" wait_for "slurmd registration" $LOG_DIR/slurmd.log slurmd_registered
fi

node_wait() {
  node_usable && return 0
  case "$(node_state)" in
    # left DOWN/DRAINED by an earlier run (e.g. "Node unexpectedly rebooted"): resume once
    down|drain|drained|fail) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  return 1
}
wait_for "node $HOST" $LOG_DIR/slurmd.log node_wait

# ---------------------------------------------------------------- associations
# Default account so sacct works and `--account=$ACCOUNT` can be given.
if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="pkd-harness" Organization="pkd" >/dev/null \
    || die "sacctmgr add account failed"
fi
for u in root ${SUDO_USER:-}; do
  if ! sacctmgr -n -P show assoc where user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
    sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null \
      || die "sacctmgr add user $u failed"
  fi
done
wait_for sacct $LOG_DIR/slurmdbd.log sacct_ok

log "cluster '$CLUSTER' up: node $HOST ($NCPU CPUs, ${REAL_MEM}MB) state=$(node_state), partition=$PARTITION. elapsed $(elapsed)s"
