#!/usr/bin/env bash
# Train across nodes with DeepSpeed's launcher over pdsh/ssh, from the first node of the hostfile:
#   launch/multinode.sh HOSTFILE [deepspeed launcher options] train [dslm flags]
# DeepSpeed forwards only a few variables to the other nodes (NCCL_*, PYTHON*, ...) plus the lines
# of its environment file. This script writes that file for this job only (DS_ENV_FILE, a private
# temporary file, so a stale .deepspeed_env lying around is not used) with what workers need: W&B
# and Hugging Face settings, NCCL/GLOO network settings, PATH and the Python environment (the same
# ninja and packages, so JIT ops are not rebuilt), and the JIT cache of DeepSpeed's ops.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 HOSTFILE [deepspeed launcher options] train [dslm flags]" >&2
    exit 2
fi
hostfile=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # a source checkout works uninstalled
launcher_args=() master_addr_given=
while [ $# -gt 0 ] && [ "$1" != train ] && [ "$1" != prepare ]; do
    case $1 in --master_addr | --master_addr=*) master_addr_given=1 ;; esac
    launcher_args+=("$1")
    shift
done
if [ $# -eq 0 ]; then
    echo "multinode.sh: no dslm command: give \`train [flags]\` after the launcher options" >&2
    exit 2
fi

# Every host, with the ssh options pdsh will use (DeepSpeed's own check tries only the first host
# and ignores PDSH_SSH_ARGS_APPEND): a host that is down is named here, not found by a hang.
python -m dslm hostfile check "$hostfile" --ssh || exit 2
if [ -z "$master_addr_given" ]; then
    # Rank 0 runs on the first host. Without --master_addr DeepSpeed asks that host for
    # `hostname -I` over a plain ssh (no PDSH_SSH_ARGS_APPEND) and takes whichever address comes
    # first, a docker bridge included: use the name the hostfile gives it.
    launcher_args+=(--master_addr "$(awk '{sub(/#.*/, "")} NF {print $1; exit}' "$hostfile")")
fi

env_file=$(mktemp "${TMPDIR:-/tmp}/dslm-deepspeed-env.XXXXXX")  # mode 600: it may hold API keys
trap 'rm -f "$env_file"' EXIT
env | grep -E '^(WANDB_|HF_|HUGGING_FACE_|TRANSFORMERS_|NCCL_|GLOO_|TORCH_EXTENSIONS_DIR=|PATH=|LD_LIBRARY_PATH=|VIRTUAL_ENV=|PYTHONPATH=|OMP_NUM_THREADS=|XDG_CACHE_HOME=)' \
    > "$env_file" || true
export DS_ENV_FILE="$env_file"

# --log_level warning: at info the launcher logs its pdsh command, with every exported value.
deepspeed --hostfile "$hostfile" --no_ssh_check --log_level warning "${launcher_args[@]}" "$root/launch/train.py" "$@"
