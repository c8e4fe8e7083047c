"""The training run: checks, data, engine, then one flat loop of step / log / eval / save."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dslm import checkpoint, data, dist, ds_config, evaluation, metrics, model, nonfinite, objectives, redact
from dslm.config import ConfigError, RunConfig

RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "results.json", "ds_config.json", "run_config.json")


def check_output_dir(config: RunConfig) -> None:
    """Refuse to start over a previous run unless told; resuming it is the default."""
    t = config.train
    out = Path(t.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {out} is a file: choose a directory")
    from dslm import inputs

    inputs.check_writable("output_dir", out)  # a read-only or full file system fails now, not at the first save
    if config.data.cache_dir:
        inputs.check_writable("cache_dir", Path(config.data.cache_dir))
    resume = t.resume_from_checkpoint
    if resume not in ("auto", "none"):
        if not (Path(resume) / checkpoint.STATE).exists():
            raise ConfigError(f"--resume_from_checkpoint {resume}: not a dslm checkpoint; give a directory under "
                              f"OUTPUT_DIR/checkpoints, or auto, or none")
        return
    previous = [name for name in RUN_OUTPUTS if (out / name).exists()]
    has_checkpoints = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if t.overwrite_output_dir or not previous or (resume == "auto" and has_checkpoints):
        return
    hint = "--resume_from_checkpoint auto to continue it, " if has_checkpoints else ""
    raise ConfigError(f"--output_dir {out} already holds a run ({', '.join(previous)}): pass {hint}"
                      f"--overwrite_output_dir to start over, or choose another --output_dir")


def run_fingerprint(config: RunConfig, objective: str, family: str, data_fingerprint: str) -> str:
    """What makes checkpoints belong to this run: model, objective, data content and seed; not step
    counts, paths, file times or a retrained tokenizer, so a restarted pod still finds its run."""
    m = config.model
    key = [objective, family, m.model_name_or_path, m.config_overrides, data_fingerprint, config.train.seed]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def trim_metrics(out: Path, step: int) -> None:
    """A resumed run logs from `step` on: drop what the interrupted run logged after its checkpoint."""
    path = out / "metrics.jsonl"
    if path.exists():
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line torn by the kill
        checkpoint.write_atomically(path, "".join(f"{row}\n" for row in kept))


def clear_previous_run(out: Path, checkpoints: bool) -> None:
    """Only once the new run is ready to train: a failed start must not lose the old outputs.

    Checkpoints go only with --overwrite_output_dir; otherwise other runs' checkpoints stay
    (rotation never touches them either).
    """
    for name in RUN_OUTPUTS:
        path = out / name
        if name == "checkpoints" and not checkpoints:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def schedule(n_train: int, config: RunConfig, world: int) -> tuple[int, int, int]:
    """(micro batches per epoch per rank, optimizer steps, warmup steps)."""
    t = config.train
    micro_per_epoch = n_train // (t.per_device_train_batch_size * world)
    steps_per_epoch = micro_per_epoch // t.gradient_accumulation_steps
    if steps_per_epoch == 0 and t.max_steps <= 0:
        raise ConfigError(f"the training set has {n_train} examples, fewer than one global batch "
                          f"({t.per_device_train_batch_size} x {world} ranks x {t.gradient_accumulation_steps} "
                          f"accumulation): give more data or a smaller batch")
    if micro_per_epoch == 0:
        raise ConfigError(f"the training set has {n_train} examples, fewer than one micro batch per rank "
                          f"({t.per_device_train_batch_size} x {world} ranks): give more data or a smaller batch")
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total)
    return micro_per_epoch, total, warmup


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Like the HF Trainer: no weight decay on biases and normalization weights."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(module: torch.nn.Module, ds: dict[str, Any], config: RunConfig, total_steps: int,
                 warmup: int) -> Any:
    """The DeepSpeed engine; the JSON's optimizer and scheduler if it has them, else ours."""
    import deepspeed
    import transformers

    t = config.train
    optimizer = None
    if "optimizer" not in ds:
        optimizer = torch.optim.AdamW(param_groups(module, t.weight_decay), lr=t.learning_rate,
                                      betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)

    def scheduler(opt: torch.optim.Optimizer) -> Any:  # DeepSpeed calls this with the optimizer it built
        return transformers.get_scheduler(t.lr_scheduler_type, opt, num_warmup_steps=warmup,
                                          num_training_steps=total_steps)

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                           model_parameters=param_groups(module, t.weight_decay),
                                           lr_scheduler=None if "scheduler" in ds else scheduler, config=ds)
    return engine


def is_logging_step(step: int, every: int, total: int, first: bool) -> bool:
    return step % every == 0 or step == total or (first and step == 1)


def micro_batches(loader: DataLoader, position: data.ResumableSampler | data.StreamBlocks, epoch: int, skip: int):
    """Endless (epoch, batch) stream from `skip` samples into `epoch`; a stream restarts its pass."""
    while True:
        position.set_epoch(epoch, skip)
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def run(config: RunConfig) -> dict[str, Any]:
    t = config.train
    out = Path(t.output_dir)
    dist.fill_launcher_env(os.environ)  # the world size is known before the checks that use it
    # Everything that can be checked cheaply is checked before the process group or any output exists.
    family, objective, model_config = model.resolve(config)
    ds_source = str(ds_config.locate(t.deepspeed))
    ds_raw = ds_config.load(t.deepspeed)
    check_output_dir(config)

    import transformers
    from deepspeed.accelerator import get_accelerator

    on_cpu = get_accelerator().device_name() == "cpu"
    if on_cpu and t.fp16:
        raise ConfigError("--fp16 needs a GPU and this machine has none: use --bf16")
    # Conflicts between the JSON and the flags, found now rather than after the data is prepared.
    ds_config.resolve(ds_raw, config, world_size=int(os.environ.get("WORLD_SIZE", 1)),
                      total_steps=max(t.max_steps, 1), warmup_steps=t.warmup_steps,
                      hidden_size=getattr(model_config, "hidden_size", None) or 1,
                      on_cpu=on_cpu, source=ds_source)
    dist.init(t.dist_timeout)
    world, rank = dist.world_size(), dist.rank()
    tracker_enabled = dist.is_main()
    transformers.logging.set_verbosity_error()  # advisory warnings; dslm reports what matters
    transformers.utils.logging.disable_progress_bar()
    if not tracker_enabled:
        import datasets

        datasets.disable_progress_bars()
    say = print if tracker_enabled else (lambda *a, **k: None)
    if config.uses_builtin_corpus:
        say("data: the built-in corpus (Python's pydoc topics); give --train_file or --dataset_name for your own")
    out.mkdir(parents=True, exist_ok=True)

    fingerprint = run_fingerprint(config, objective, family, data.content_fingerprint(config.data))
    ckpt = checkpoint.Checkpointer(out, fingerprint, t.save_total_limit, t.save_milestone_steps,
                                   warn=lambda msg: say(f"warning: {msg}"))
    found = find_resume(config, ckpt)
    if not found and not t.overwrite_output_dir and ckpt.foreign():
        raise ConfigError(f"{ckpt.root} holds checkpoints of another run ({ckpt.foreign()[0].name}: different model, "
                          f"data or seed): use another --output_dir, or --overwrite_output_dir to replace them")
    if found and not (config.model.tokenizer_name or config.model.model_name_or_path):
        # The model learned the ids of the tokenizer saved with it: a retrained one could differ.
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, tokenizer_name=str(found.path)))

    transformers.set_seed(t.seed)
    prepared = data.prepare(config, family, objective)
    if prepared.validation is None:
        say("no validation data: evaluation is skipped")
    module = model.build(config, model_config, objective, prepared.tokenizer)
    streaming = config.data.streaming
    if streaming:  # a stream has no length: --max_steps (required) sets the schedule
        micro_per_epoch, total_steps = None, t.max_steps
        warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total_steps)
    else:
        micro_per_epoch, total_steps, warmup = schedule(len(prepared.train), config, world)
    hidden = getattr(module.config, "hidden_size", None)
    ds = ds_config.resolve(ds_raw, config, world_size=world, total_steps=total_steps, warmup_steps=warmup,
                           hidden_size=hidden, on_cpu=on_cpu, source=ds_source)
    stage = ds_config.zero_stage(ds)
    load_dir = None
    if found:
        load_dir = found.path.parent
        old_stage = found.state["zero_stage"]
        if old_stage != stage:
            raise ConfigError(f"{found.path} was saved with ZeRO-{old_stage} and this run uses ZeRO-{stage}: resume "
                              f"with a ZeRO-{old_stage} config, or start over (--resume_from_checkpoint none)")
        if found.state["world_size"] != world and stage > 0:
            # ZeRO shards are cut for the old world size: DeepSpeed's universal format re-cuts them.
            say(f"resuming a {found.state['world_size']}-rank checkpoint on {world} ranks: converting "
                f"{found.path.name} to a universal checkpoint")
            if dist.is_main():
                checkpoint.to_universal(found.path)
            dist.barrier()
            load_dir = found.path / "universal"
            ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    if t.gradient_checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = objectives.Forward(module, objective)
    engine = build_engine(module, ds, config, total_steps, warmup)
    if t.torch_compile:
        engine.compile()
    # Same initial weights on every rank, different masks and dropout per rank from here on.
    torch.manual_seed(t.seed + rank)

    step = epoch = samples = samples_in_epoch = tokens_seen = 0
    if found:
        with checkpoint._quiet():
            loaded, _ = engine.load_checkpoint(str(load_dir), tag=found.path.name)
        if loaded is None:
            raise checkpoint.CheckpointError(f"DeepSpeed could not load {found.path}: check that it is complete")
        state = found.state
        step, epoch, samples, tokens_seen = state["step"], state["epoch"], state["samples"], state["tokens_seen"]
        samples_in_epoch = state["samples_in_epoch"]
        if state["world_size"] == world:  # the same ranks continue their own random streams exactly
            checkpoint.set_rng_state(torch.load(found.path / f"rng_state_{rank:05d}.pt", weights_only=True))
        say(f"resumed from {found.path} at step {step} ({samples} samples seen)")
        if dist.is_main():
            trim_metrics(out, step)

    collate = objectives.Collator(objective, prepared.tokenizer, config.objective)
    micro = t.per_device_train_batch_size
    sampler = None if streaming else data.ResumableSampler(len(prepared.train), world, rank, t.seed, micro)
    # The loader's own generator: making an iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would diverge from one that never stopped.
    loader_rng = torch.Generator()
    loader_rng.manual_seed(t.seed + rank)
    loader = DataLoader(prepared.train, batch_size=micro, sampler=sampler, collate_fn=collate, drop_last=True,
                        num_workers=t.dataloader_num_workers, pin_memory=not on_cpu, generator=loader_rng,
                        # a stream's workers must see each pass's skip: no persistent workers
                        persistent_workers=t.dataloader_num_workers > 0 and not streaming)

    def run_eval() -> dict[str, float]:
        if prepared.validation is None:
            return {}
        return evaluation.evaluate(engine, prepared.validation, collate, objective, t.per_device_eval_batch_size,
                                   engine.device, t.seed, forward)

    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
    tokens_per_step = micro * t.gradient_accumulation_steps * world * config.data.max_seq_length
    if dist.is_main():
        if not found:
            clear_previous_run(out, checkpoints=t.overwrite_output_dir)
        (out / "ds_config.json").write_text(json.dumps(ds, indent=2))
        (out / "run_config.json").write_text(json.dumps(redact.redact(
            {**config.to_dict(), "objective_resolved": objective, "model_type": family}), indent=2))
    n_train = "streamed" if streaming else len(prepared.train)
    say(f"{objective} | {family} {n_params / 1e6:.2f}M params | ZeRO-{stage} | {world} ranks | {n_train} train / "
        f"{len(prepared.validation or [])} eval examples of {config.data.max_seq_length} tokens | {total_steps} steps "
        f"of {tokens_per_step} tokens | output {out}")
    say(ckpt.estimate_line(n_params, t.bf16 or t.fp16, t.save_total_limit))
    if step >= total_steps:
        say(f"already trained to step {step} of {total_steps}: nothing to do (raise --max_steps to go further)")
        if dist.is_main() and not (out / "final").exists():  # killed between the last commit and the export
            checkpoint.export(found.path, out / "final", check=False)
            say(f"exported {found.path} to {out / 'final'}")
        dist.barrier()
        return json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}

    precision = "bf16" if t.bf16 else "fp16" if t.fp16 else "fp32"
    peak = metrics.peak_flops(precision)
    n_layers = getattr(module.config, "num_hidden_layers", None)
    per_token = metrics.flops_per_token(n_params, n_layers or 0, hidden or 0, config.data.max_seq_length, objective)

    def save(at: int) -> Path:
        if not nonfinite.weights_finite(module):
            raise nonfinite.NonFinite(f"the weights hold inf/NaN at step {at}: checkpoint {checkpoint.tag(at)} is not "
                                      f"written ({kept_checkpoint(ckpt)}); check --learning_rate, --adam_epsilon and "
                                      f"the data")
        unlogged = window[2].clone()  # tokens since the last log, not yet in tokens_seen
        torch.distributed.all_reduce(unlogged)
        state = {"step": at, "epoch": epoch, "samples": samples, "samples_in_epoch": samples_in_epoch,
                 "tokens_seen": tokens_seen + int(unlogged.item()), "world_size": world, "zero_stage": stage,
                 "skipped_steps": guard.skipped,
                 "objective": objective,
                 "model_type": family, "data_fingerprint": prepared.fingerprint,
                 "config": redact.redact(config.to_dict())}
        started = time.perf_counter()
        path = ckpt.save(engine, at, state, module.config, prepared.tokenizer)
        tracker.log(at, {"checkpoint/save_seconds": time.perf_counter() - started,
                         "checkpoint/size_mb": (ckpt.last_size or 0) / 2**20})
        return path

    # Each node has one local rank 0 (hostnames can repeat: containers, namespaces, several slurmd).
    nodes = sum(dist.all_gather_object(dist.local_rank() == 0))
    wandb_run = None
    if tracker_enabled and config.logging.report_to != "none" and metrics.wandb_mode() != "disabled":
        run_facts = {"world_size": world, "nodes": nodes, "ranks_per_node": world // nodes,
                     "parameters": n_params, "tokens_per_step": tokens_per_step, "total_steps": total_steps,
                     "train_examples": None if streaming else len(prepared.train),
                     "eval_examples": len(prepared.validation or []), "data_fingerprint": prepared.fingerprint,
                     "objective": objective, "model_type": family, "zero_stage": stage}
        wandb_config = redact.redact({**config.to_dict(), "deepspeed": ds, "run": run_facts,
                                      "versions": library_versions(), "git_commit": git_commit()})
        wandb_run = metrics.WandbRun(out, resume_step=step if found else None, job_type=objective,
                                     config=wandb_config,
                                     name=f"{objective}-{family}-{n_params / 1e6:.1f}M-zero{stage}",
                                     logging=config.logging, say=say)
    stop = dist.StopFlag()
    stop.install()
    tracker = metrics.Tracker(out, total_steps, enabled=tracker_enabled, start_step=step, wandb_run=wandb_run)
    guard = nonfinite.Guard(engine, t.on_nan, fp16=bool(ds.get("fp16", {}).get("enabled")),
                            min_loss_scale=float(ds.get("fp16", {}).get("min_loss_scale", 1)),
                            warn=lambda msg: tracker.print(f"warning: {msg}"), kept=lambda: kept_checkpoint(ckpt))
    guard.skipped = found.state.get("skipped_steps", 0) if found else 0

    try:
        before: dict[str, float] = {}
        if step == 0:
            before = run_eval()
            if before:
                tracker.log(0, before)
                tracker.print(f"eval before training: loss {before['eval/loss']:.4f} "
                              f"perplexity {before['eval/perplexity']:.2f} accuracy {before['eval/accuracy']:.4f}")

        gas = t.gradient_accumulation_steps
        own_norm = None
        # [summed loss, micro batches, tokens] since the last log: summed on the device, read only when logging
        window = torch.zeros(3, device=engine.device)
        step_loss = torch.zeros((), device=engine.device)
        last_log = start = time.perf_counter()
        start_step = last_logged_step = step
        engine.train()
        stream = micro_batches(loader, sampler or prepared.train, epoch, samples_in_epoch)
        train_loss = None
        while step < total_steps:
            logging_now = is_logging_step(step + 1, t.logging_steps, total_steps, t.logging_first_step)
            step_loss.zero_()
            for micro_step in range(gas):
                batch_epoch, batch = next(stream)
                if batch_epoch != epoch:
                    epoch, samples_in_epoch = batch_epoch, 0
                # Counted on the CPU copy: no device sync in the hot loop.
                n_tokens = int(batch["attention_mask"].sum())
                loss, _, _ = forward(engine, batch, engine.device)
                engine.backward(loss)
                boundary = micro_step == gas - 1
                if boundary and logging_now and stage == 0 and not guard.checks_itself:
                    # Without ZeRO DeepSpeed reports no gradient norm; the averaged grads are here until step().
                    own_norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()
                                                              if p.grad is not None])
                checked_norm = guard.step(module, boundary)  # engine.step(), guarded
                own_norm = own_norm if checked_norm is None else checked_norm
                step_loss += loss.detach().float()
                window[2] += n_tokens
                samples += micro * world
                samples_in_epoch += micro * world
            step += 1
            if guard.after_step(step, step_loss):  # a skipped step's loss stays out of the logged mean
                window[0] += step_loss
                window[1] += gas
            tracker.advance()

            if logging_now:
                torch.distributed.all_reduce(window)
                now = time.perf_counter()
                # None when every step since the last log was skipped for inf/NaN
                train_loss = (window[0] / window[1]).item() if window[1].item() else None
                tokens_seen += int(window[2].item())  # real tokens on all ranks, padding excluded
                steps_since_log, last_logged_step = step - last_logged_step, step
                grad_norm = engine.get_global_grad_norm() if stage else own_norm
                figures = {
                    "train/loss": train_loss,
                    "train/learning_rate": engine.get_lr()[0],
                    "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "train/epoch": epoch if streaming else samples / (micro_per_epoch * micro * world),
                    "train/tokens_seen": tokens_seen,
                    "perf/tokens_per_second": window[2].item() / (now - last_log),
                    "perf/samples_per_second": steps_since_log * gas * micro * world / (now - last_log),
                    "perf/step_time": (now - last_log) / steps_since_log,
                    "perf/elapsed_s": metrics.elapsed(),
                    **guard.figures(),
                    **metrics.memory_figures(),
                }
                if peak and n_layers:  # model FLOPs utilisation, GPUs only
                    figures["perf/mfu"] = figures["perf/tokens_per_second"] * per_token / (peak * world)
                window.zero_()
                last_log = now
                tracker.log(step, figures)
            if t.eval_steps and step % t.eval_steps == 0 and step != total_steps:
                figures = run_eval()
                if figures:
                    tracker.log(step, figures)
                    tracker.print(f"step {step}: eval loss {figures['eval/loss']:.4f} "
                                  f"perplexity {figures['eval/perplexity']:.2f}")
            saved = t.save_steps and step % t.save_steps == 0 and step != total_steps
            if saved:
                save(step)
            if step != total_steps and stop.agreed():
                path = ckpt.root / checkpoint.tag(step) if saved else save(step)
                tracker.close()
                raise dist.Stopped(f"stopped by {stop.requested or 'a signal on another rank'} at step {step}; "
                                   f"checkpoint {path} is committed: run the same command to resume")
        train_time = time.perf_counter() - start
        tracker.close()

        after = run_eval()
        if after:
            tracker.log(step, after)
        final = save(step)
        if dist.is_main():
            checkpoint.export(final, out / "final", check=False, overwrite=True)
        dist.barrier()

        trained_tokens = tokens_seen
        results = {
            "objective": objective, "model_type": family, "world_size": world, "nodes": nodes, "zero_stage": stage,
            "data_fingerprint": prepared.fingerprint, "resumed_from_step": start_step or None,
            "train": {"steps": step, "samples": samples, "tokens": trained_tokens, "loss": train_loss,
                      "skipped_steps": guard.skipped,
                      "runtime_s": train_time,
                      "tokens_per_second": trained_tokens / train_time if train_time else None},
            "eval_before": before, "eval": after,
        }
        if dist.is_main():
            (out / "results.json").write_text(json.dumps(results, indent=2))
            skipped = f", {guard.skipped} skipped for inf/NaN" if guard.skipped else ""
            summary = f"done: {step} steps{skipped} in {train_time:.0f}s ({tokens_seen / train_time:.0f} tokens/s)"
            if before and after:
                summary += (f"; eval perplexity {before['eval/perplexity']:.2f} -> {after['eval/perplexity']:.2f}, "
                            f"accuracy {before['eval/accuracy']:.3f} -> {after['eval/accuracy']:.3f}")
            elif after:
                summary += f"; eval perplexity {after['eval/perplexity']:.2f}"
            print(summary + f"; model in {out / 'final'}", flush=True)
        tracker.close(exit_code=0)
        return results

    except BaseException as exc:  # the W&B run records how the job ended, then the error goes on
        tracker.close(exit_code=getattr(exc, "exit_code", 1))
        lost = dist.comm_failure(exc, t.dist_timeout)
        if lost:
            raise dist.PeerLost(f"stopped at step {step}: {lost}; {kept_checkpoint(ckpt)}: run the same command to "
                                f"resume") from None
        raise


def kept_checkpoint(ckpt: checkpoint.Checkpointer) -> str:
    """Which committed checkpoint a failed run leaves as latest (read from the pointer: no collective)."""
    pointer = ckpt.root / checkpoint.POINTER
    if pointer.exists():
        return f"{ckpt.root / pointer.read_text().strip()} stays the latest checkpoint"
    return "no checkpoint was committed before it"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dslm", "torch", "deepspeed", "transformers", "datasets", "tokenizers", "wandb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the dslm checkout that runs, when it is one."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def find_resume(config: RunConfig, ckpt: checkpoint.Checkpointer) -> checkpoint.Found | None:
    """The checkpoint to resume from, the same on every rank (they verify it together)."""
    t = config.train
    if t.resume_from_checkpoint == "none" or (t.resume_from_checkpoint == "auto" and t.overwrite_output_dir):
        return None
    if t.resume_from_checkpoint == "auto":
        return ckpt.latest()
    path = Path(t.resume_from_checkpoint)
    problem = checkpoint.verify_together(path)
    if problem:
        raise ConfigError(f"--resume_from_checkpoint {path}: {problem}")
    return checkpoint.Found(path, checkpoint.read_state(path))
