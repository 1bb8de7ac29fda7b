#!/usr/bin/env bash
# A one-node SLURM on this machine for `make test-slurm` (tests/test_slurm.py): installs slurm-wlm and
# munge from Debian if missing, writes /etc/slurm/slurm.conf (node `localhost`, its CPUs, no GPU, one
# partition `debug`), starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
# cred_expire=10 and a 5 s scheduler pass: a requeued job starts again within ~15 s (SLURM's defaults:
# 120 s, then the next 60 s pass).
# Idempotent: a second run with the daemons up and the same conf only checks the node. Needs root.
# SLURM_UP_CPUS overrides the node's CPU count (default: nproc).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
CPUS=${SLURM_UP_CPUS:-$(nproc)}
LOGDIR=/var/log/slurm

say() { echo "slurm_up: $*"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        say "slurm-wlm/munge are not installed and this is not root; install them: apt-get install slurm-wlm munge" >&2
        exit 1
    fi
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    if sinfo -h -n localhost -o %T 2>/dev/null | grep -q idle; then
        say "cluster is up (not root: nothing else to do)"
        exit 0
    fi
    say "the cluster is not up and starting it needs root" >&2
    exit 1
fi

# ---- the conf: one node, CPUs only (no GresTypes: a GPU request is refused, as on a CPU cluster)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR" /run/munge
want=$(mktemp)
cat >"$want" <<EOF
# written by bacon-zoo tools/slurm_up.sh
ClusterName=bacon
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
KillWait=30
MinJobAge=600
NodeName=localhost CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$want" "$CONF"; then
    install -m 644 "$want" "$CONF"
    changed=1
    say "wrote $CONF"
fi
rm -f "$want"

# ---- daemons (each started only when not running; restarted when the conf changed)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ] && running /run/slurmctld.pid; then
    say "conf changed: restarting slurmctld and slurmd"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        running /run/slurmctld.pid || running /run/slurmd.pid || break
        sleep 1
    done
fi
if ! running /run/munge/munged.pid; then
    chown munge:munge /run/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
if ! running /run/slurmctld.pid; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
fi
if ! running /run/slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd -N localhost
fi

# ---- wait for the node (the first start takes about a minute)
for i in $(seq 120); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) say "node localhost is $state ($CPUS CPUs, no GPU; partition debug)"; exit 0 ;;
        down*|drain*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    [ $((i % 15)) = 0 ] && say "waiting for the node (state: ${state:-no answer})"
    sleep 1
done
say "the node did not come up; see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log" >&2
exit 1
