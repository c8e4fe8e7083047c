#!/usr/bin/env bash
# Start this node's ranks without ssh between nodes: run it on every node, each with its own rank.
#   launch/node.sh HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]
# HOSTFILE lists all nodes in the same order everywhere (node 0 first: it runs global rank 0);
# MASTER_ADDR is node 0's address as the other nodes reach it; MASTER_PORT (default 29500) must be
# free there. Variables are not forwarded: each node uses its own environment.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 HOSTFILE NODE_RANK MASTER_ADDR train [dslm flags]" >&2
    exit 2
fi
hostfile=$1 node_rank=$2 master_addr=$3
shift 3
python -m dslm hostfile check "$hostfile" || exit 2
exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$node_rank" --master_addr "$master_addr" \
    --master_port "${MASTER_PORT:-29500}" "$(dirname "$0")/train.py" "$@"
