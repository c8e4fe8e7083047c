#!/usr/bin/env bash
# Start this node's ranks without ssh between nodes: run it on every node, each with its own rank.
#   launch/node.sh HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]
# HOSTFILE lists all nodes in the same order everywhere (node 0 first: it runs global rank 0);
# MASTER_ADDR is node 0's address as the other nodes reach it; MASTER_PORT (default 29500) must be
# free there. Variables are not forwarded: each node uses its own environment.
#
# The ranks are started here, each with its RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE, not by
# DeepSpeed's per-node launcher: on SIGTERM that launcher kills its ranks (at once, or 30 s later) and
# exits 1, and SLURM's time-limit signal (and scancel) reaches every process of the step, the launcher
# too. Here SIGTERM/SIGINT (preemption, a pod's termination, a time limit, scancel) reach the ranks,
# which save a checkpoint at the next step and exit 75; this script then exits 75 too, which the SLURM
# script and the Kubernetes Job read as "stopped, resume me".
set -euo pipefail

if [ "${BASH_VERSINFO[0]}" -lt 5 ] || { [ "${BASH_VERSINFO[0]}" = 5 ] && [ "${BASH_VERSINFO[1]}" -lt 1 ]; }; then
    echo "dslm: error: $0 needs bash 5.1 or newer (wait -n -p), this is $BASH_VERSION: install a newer bash" >&2
    exit 2
fi
if [ $# -lt 4 ]; then
    echo "usage: $0 HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]" >&2
    exit 2
fi
hostfile=$1 node_rank=$2 master_addr=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # a source checkout works uninstalled
python -m dslm hostfile check "$hostfile" || exit 2
read -r world first slots < <(python -m dslm hostfile node "$hostfile" "$node_rank") || exit 2

pids=()
for ((local_rank = 0; local_rank < slots; local_rank++)); do
    RANK=$((first + local_rank)) LOCAL_RANK=$local_rank WORLD_SIZE=$world LOCAL_WORLD_SIZE=$slots \
        MASTER_ADDR=$master_addr MASTER_PORT=${MASTER_PORT:-29500} python "$root/launch/train.py" "$@" &
    pids+=("$!")
done
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

# Wait for every rank. A rank that fails (not 0, not 75) leaves the others unable to go on (they find out
# at their next collective and exit with their own line); any still running 30 s later are killed.
remaining=("${pids[@]}") failed="" stopped="" reaper=""
while [ "${#remaining[@]}" -gt 0 ]; do
    done_pid=""
    wait -n -p done_pid "${remaining[@]}" && code=0 || code=$?
    [ -n "${done_pid:-}" ] || continue  # a trapped signal interrupted the wait (and unset the name)
    next=()
    for pid in "${remaining[@]}"; do [ "$pid" = "$done_pid" ] || next+=("$pid"); done
    remaining=("${next[@]}")
    if [ "$code" = 75 ]; then
        stopped=75
    elif [ "$code" != 0 ] && [ -z "$failed" ]; then
        failed=$code
        (sleep 30; kill -9 "${pids[@]}" 2>/dev/null || true) &
        reaper=$!
    fi
done
[ -z "$reaper" ] || kill "$reaper" 2>/dev/null || true
exit "${failed:-${stopped:-0}}"
