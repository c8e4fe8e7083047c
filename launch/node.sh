#!/usr/bin/env bash
# Start this node's ranks without ssh between nodes: run it on every node, each with its own rank.
#   launch/node.sh HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]
# HOSTFILE lists all nodes in the same order everywhere (node 0 first: it runs global rank 0);
# MASTER_ADDR is node 0's address as the other nodes reach it; MASTER_PORT (default 29500) must be
# free there. Variables are not forwarded: each node uses its own environment.
#
# SIGTERM/SIGINT (preemption, a pod's termination, scancel) go straight to the ranks, which save a
# checkpoint at the next step and exit 75; this script then exits 75 too. Sent to DeepSpeed's
# launcher instead, they would kill the ranks after 30 s, and a launcher running as a container's
# PID 1 would not get them at all.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]" >&2
    exit 2
fi
hostfile=$1 node_rank=$2 master_addr=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # a source checkout works uninstalled
python -m dslm hostfile check "$hostfile" || exit 2

ranks() {  # the training processes under this script
    local child
    for child in $(pgrep -P "$1"); do
        if grep -qa -- "--local_rank=" "/proc/$child/cmdline" 2>/dev/null; then echo "$child"; else ranks "$child"; fi
    done
}
forward() { kill -s "$1" $(ranks $$) 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$node_rank" --master_addr "$master_addr" \
    --master_port "${MASTER_PORT:-29500}" "$root/launch/train.py" "$@" &
launcher=$!
status=0
# `wait` returns early when a trapped signal arrives: keep waiting until the launcher has exited.
while true; do
    wait "$launcher" && status=0 || status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
exit "$status"
