#!/usr/bin/env bash
# torchrun on every node, the nodes joined by c10d rendezvous at node 0:
#   NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0 launch/torchrun.sh train [dslm flags]
# A failed rank restarts the whole node group up to MAX_RESTARTS times (default 3); the same
# command then resumes from the newest committed checkpoint (--resume_from_checkpoint auto).
# MASTER_ADDR must be an address of node 0 as every node (node 0 included) resolves it.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to node 0\'s address}"
exec torchrun --nnodes "${NNODES:-1}" --nproc-per-node "${NPROC_PER_NODE:-1}" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-dslm}" \
    --max-restarts "${MAX_RESTARTS:-3}" "$(dirname "$0")/train.py" "$@"
