#!/usr/bin/env bash
# Train across nodes with DeepSpeed's launcher over pdsh/ssh:
#   launch/multinode.sh HOSTFILE [deepspeed launcher options] train [dslm flags]
# DeepSpeed forwards only a few variables to the other nodes (NCCL_*, PYTHON*, ...) plus the lines
# of its environment file. This script writes that file for this job only (DS_ENV_FILE, a private
# temporary file, so a stale .deepspeed_env lying around is not used) with what workers need: W&B
# and Hugging Face settings, NCCL/GLOO network settings, PATH and the Python environment (the same
# ninja and packages), and the JIT cache of DeepSpeed's ops.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 HOSTFILE [deepspeed launcher options] train [dslm flags]" >&2
    exit 2
fi
hostfile=$1
shift
if [ ! -f "$hostfile" ]; then
    echo "multinode.sh: hostfile $hostfile not found: see hostfiles/README.md" >&2
    exit 2
fi

env_file=$(mktemp "${TMPDIR:-/tmp}/dslm-deepspeed-env.XXXXXX")  # mode 600: it may hold API keys
trap 'rm -f "$env_file"' EXIT
env | grep -E '^(WANDB_|HF_|HUGGING_FACE_|TRANSFORMERS_|NCCL_|GLOO_|TORCH_EXTENSIONS_DIR=|PATH=|VIRTUAL_ENV=|PYTHONPATH=|OMP_NUM_THREADS=|XDG_CACHE_HOME=)' \
    > "$env_file" || true
export DS_ENV_FILE="$env_file"

deepspeed --hostfile "$hostfile" "$(dirname "$0")/train.py" "$@"
