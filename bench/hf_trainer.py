"""The baseline: Hugging Face's Trainer with its DeepSpeed integration, set up as run_mlm.py / run_clm.py do.

Launched like dslm (`deepspeed --num_gpus 2 bench/hf_trainer.py ...`) on the same DeepSpeed JSON,
tokenizer, model config, data file, sequence length, batch and precision. The data path is
run_*lm.py's: `datasets.map` to tokenize (with `return_special_tokens_mask` for mlm), then
`datasets.map(group_texts)` to cut blocks, then `DataCollatorForLanguageModeling`. The model is
built from `--model_type` + `--config_overrides` as run_*lm.py build one from scratch.

A callback stamps the wall time at the end of every optimizer step; rank 0 writes them, with
the process start time, to `--out` (JSON), which `bench/train_bench.py` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import chain
from pathlib import Path

START = float(os.environ.get("BENCH_T0", time.time()))  # the orchestrator's clock just before it started us


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--objective", choices=("mlm", "clm"), required=True)
    p.add_argument("--model_type", required=True)
    p.add_argument("--config_overrides", default="")
    p.add_argument("--tokenizer_name", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--deepspeed", required=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--torch_compile", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cache_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=-1)  # added by the DeepSpeed launcher
    return p.parse_args()


def gloo_without_gpus() -> None:
    """Let the Trainer's DeepSpeed integration run on a machine without GPUs.

    accelerate (1.15) picks a process-group backend only for accelerators: on CPUs it returns none,
    so the Trainer counts 1 process while DeepSpeed counts every rank, and DeepSpeed's batch check
    fails ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size").
    Choosing gloo there, as accelerate does for its own multi-CPU mode, is the smallest change that
    runs the Trainer unmodified otherwise.
    """
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if torch.cuda.is_available():
        return
    original = PartialState._prepare_backend

    def prepare(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        if chosen is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return chosen, kind

    PartialState._prepare_backend = prepare


def main() -> None:
    args = parse()
    gloo_without_gpus()
    import datasets
    import torch
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    transformers.logging.set_verbosity_error()
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
        learning_rate=args.learning_rate, bf16=args.bf16, torch_compile=args.torch_compile, seed=args.seed,
        deepspeed=args.deepspeed,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=args.max_steps,
        disable_tqdm=True, local_rank=args.local_rank,
        # the Trainer refuses bf16 without a GPU unless told it runs on the CPU (run_*lm.py users pass --use_cpu)
        use_cpu=args.bf16 and not torch.cuda.is_available())
    transformers.set_seed(args.seed)

    # run_*lm.py: raw text -> tokenize map -> group_texts map (their code, condensed).
    raw = datasets.load_dataset("text", data_files={"train": args.train_file}, cache_dir=args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    mlm = args.objective == "mlm"

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=mlm)

    block_size = args.max_seq_length

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated[next(iter(examples))])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        if not mlm:
            result["labels"] = result["input_ids"].copy()
        return result

    with training_args.main_process_first(desc="dataset map tokenization"):
        tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    with training_args.main_process_first(desc="grouping texts together"):
        train_dataset = tokenized.map(group_texts, batched=True)["train"]

    config = CONFIG_MAPPING[args.model_type]()
    if args.config_overrides:
        config.update_from_string(args.config_overrides)
    auto = AutoModelForMaskedLM if mlm else AutoModelForCausalLM
    model = auto.from_config(config)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=mlm, mlm_probability=0.15)

    import psutil

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator,
                      processing_class=tokenizer, callbacks=[Stamp()])
    trainer.train()
    if trainer.is_world_process_zero():
        n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
        Path(args.out).write_text(json.dumps({
            "start": START, "process_start": psutil.Process().create_time(), "step_times": stamps,
            "parameters": n_params, "train_examples": len(train_dataset),
            "tokens_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps
            * int(os.environ.get("WORLD_SIZE", 1)) * args.max_seq_length}))

if __name__ == "__main__":
    sys.exit(main())
