#!/usr/bin/env bash
# Configure and start a single-node SLURM cluster on this machine (CI / dev box), as root.
#
# Installs nothing (run .ci/install_slurm.sh first). Idempotent: safe to run again while the
# daemons are up; it only (re)starts what is not running and rewrites slurm.conf only when it
# changed (then `scontrol reconfigure`). Works without systemd (containers, sandboxes).
#
# The cluster: one node (this host, `hostname -s`, CPUs/RealMemory from `slurmd -C`), one default
# partition "debug", no accounting daemon (query finished jobs with `scontrol show job`, kept
# for MinJobAge seconds, or the jobcomp log below), no cgroups (proctrack/linuxproc, task/none).
#
# Env overrides: SLURM_CONF (default /etc/slurm/slurm.conf), SLURM_PARTITION (default debug).
set -euo pipefail

SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
PARTITION="${SLURM_PARTITION:-debug}"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
export SLURM_CONF

log() { echo "start_slurm: $*"; }
die() { echo "start_slurm: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (SlurmUser=root single-node setup)"
for exe in munged mungekey slurmctld slurmd sinfo scontrol; do
  command -v "$exe" >/dev/null || die "'$exe' not found: run .ci/install_slurm.sh first"
done

# pid_alive PIDFILE -> 0 when the pid file names a live process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---- munge: authentication between SLURM clients and daemons --------------------------------
start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
    return
  fi
  log "starting munged"
  runuser -u munge -- munged
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.2
  done
  die "munged did not come up (see /var/log/munge/munged.log)"
}

# ---- slurm.conf ----------------------------------------------------------------------------
write_conf() {
  local host node_line tmp
  host="$(hostname -s)"
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  node_line="$(slurmd -C | head -n1)"
  [[ "$node_line" == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node_line"
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
# Written by .ci/start_slurm.sh: single-node SLURM for tests. Edits are overwritten.
ClusterName=speechxfer
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in containers: track processes via /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
# No slurmdbd: finished jobs stay visible to 'scontrol show job' for MinJobAge seconds
# and are appended to the jobcomp log.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MinJobAge=3600
SchedulerType=sched/backfill
${node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
  install -d "$(dirname "$SLURM_CONF")"
  if [ -f "$SLURM_CONF" ] && cmp -s "$tmp" "$SLURM_CONF"; then
    rm -f "$tmp"
    CONF_CHANGED=0
  else
    log "writing $SLURM_CONF"
    install -m 0644 "$tmp" "$SLURM_CONF"
    rm -f "$tmp"
    CONF_CHANGED=1
  fi
}

# ---- daemons ---------------------------------------------------------------------------------
start_daemons() {
  install -d -m 0755 "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
  if pid_alive "$CTLD_PID"; then
    log "slurmctld already running (pid $(cat "$CTLD_PID"))"
    if [ "$CONF_CHANGED" = 1 ]; then log "slurm.conf changed: scontrol reconfigure"; scontrol reconfigure; fi
  else
    log "starting slurmctld"
    slurmctld -f "$SLURM_CONF"
  fi
  for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping | grep -q UP || die "slurmctld not responding (see $LOG_DIR/slurmctld.log)"

  if pid_alive "$SLURMD_PID"; then
    log "slurmd already running (pid $(cat "$SLURMD_PID"))"
  else
    log "starting slurmd"
    slurmd -f "$SLURM_CONF"
  fi
}

# Wait until the node accepts jobs; resume it if a previous run left it down/drained.
wait_node_idle() {
  local host state
  host="$(hostname -s)"
  for i in $(seq 100); do
    state="$(sinfo -h -N -n "$host" -o %t 2>/dev/null | head -n1)"
    case "$state" in
      idle|mix|alloc) log "node $host is $state; partition $PARTITION ready"; return ;;
      down*|drain*|drng*|fail*)
        [ "$i" -eq 10 ] && { log "node $host is $state: resuming"; scontrol update NodeName="$host" State=RESUME || true; } ;;
    esac
    sleep 0.3
  done
  sinfo -N -l >&2 || true
  die "node $host not ready (state '$state'; see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log)"
}

CONF_CHANGED=0
start_munge
write_conf
start_daemons
wait_node_idle
