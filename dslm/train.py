"""The training run: checks, then the parts (data, model, engine, checkpoints, evaluation, reports),
then one flat loop of step / log / eval / save, then the final eval and export."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dslm import (
    activations,
    atomic,
    attention,
    checkpoint,
    dist,
    documents,
    ds_config,
    engine,
    metrics,
    model,
    model_checks,
    nonfinite,
    objectives,
    outdir,
    profile,
    redact,
    run_files,
    trackers,
)
from dslm import schedule as schedules
from dslm import tokenizer as tok
from dslm.checkpoint import Checkpointer, Checkpoints
from dslm.config import GIVEN_KEY, RunConfig
from dslm.data import cache, mixture, sampler, sources, stream
from dslm.errors import ConfigError, PeerLost, Stopped
from dslm.evaluation import Evaluator
from dslm.export import SCRATCH_PREFIX, export
from dslm.profile import StepProfiler
from dslm.progress import Progress
from dslm.report import Reporter
from dslm.schedule import Schedule
from dslm.step import train_step


@dataclass
class Start:
    """What the checks before any work settled: the model, the DeepSpeed config, the device."""

    spec: model.ModelSpec
    ds: dict[str, Any]  # resolved; an epoch-based run's scheduler step counts wait for the data
    ds_source: str
    on_cpu: bool
    fingerprint: str  # the run's identity: its checkpoints and its output directory are recognised by it
    rerun: bool  # the output directory holds this same run, stopped before it committed a checkpoint


@dataclass
class Parts:
    """The built pieces a run trains with (no behaviour of its own: each piece owns its state)."""

    engine: Any
    module: torch.nn.Module
    prepared: cache.Prepared
    forward: objectives.Forward
    loader: DataLoader
    collate: objectives.Collator
    position: Any  # what the loader resumes by: the ResumableSampler, or the stream
    schedule: Schedule
    progress: Progress
    found: checkpoint.Found | None
    checkpoints: Checkpoints
    checkpointer: Checkpointer
    evaluator: Evaluator
    facts: dict[str, Any]  # world size, nodes, ZeRO stage, model, data: for the state, W&B and results


def check(config: RunConfig, reporter: Reporter) -> Start:
    """Everything that can be checked cheaply, before the process group or any output exists (the
    launcher's variables completed first: `dist.fill_launcher_env`)."""
    t = config.train
    if "wandb" in config.logging.trackers:
        trackers.check_environment()
    if config.data.shard_index is not None:
        raise ConfigError("--shard_index prepares one slice of the cache: it is for `dslm prepare`; train with "
                          "--num_shards N alone")
    spec = model.resolve(config)
    for warning in spec.warnings:
        reporter.say(warning, file=sys.stderr)
    if config.data.reset_attention_mask:
        documents.check(spec.objective, spec.family)
    cache.check_slices(config, spec.family, spec.objective, spec.tokenizer)
    ds_source = str(ds_config.locate(t.deepspeed))
    ds_raw = ds_config.load(t.deepspeed)
    fingerprint = outdir.run_fingerprint(config, spec.objective, spec.family, sources.content_fingerprint(config.data))
    outdir.check(config, fingerprint)
    rerun = outdir.identity(Path(t.output_dir)) == fingerprint
    from deepspeed.accelerator import get_accelerator

    on_cpu = get_accelerator().device_name() == "cpu"
    if on_cpu and t.fp16:
        raise ConfigError("--fp16 needs a GPU and this machine has none: use --bf16")
    early = schedules.known_early(config)  # None for an epoch-based run: its length waits for the data
    ds = ds_config.resolve(ds_raw, config, world_size=dist.world_size(),
                           hidden_size=getattr(spec.config, "hidden_size", None), on_cpu=on_cpu, source=ds_source,
                           total_steps=early.total_steps if early else None,
                           warmup_steps=early.warmup_steps if early else None)
    if spec.n_params:
        model_checks.check_memory(spec.n_params, dist.ranks_per_node(), partitioned=ds_config.zero_stage(ds) == 3)
    return Start(spec, ds, ds_source, on_cpu, fingerprint, rerun)


def build(config: RunConfig, start: Start, reporter: Reporter) -> Parts:
    """Data, model, engine, resumed state, and the components the loop asks; the process group is up."""
    t, spec = config.train, start.spec
    world, rank = dist.world_size(), dist.rank()
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    outdir.check_shared(out)
    checkpoints = Checkpoints(out, start.fingerprint, warn=reporter.warn)
    found = checkpoints.find(t.resume_from_checkpoint, t.overwrite_output_dir)
    outdir.refuse_foreign(checkpoints, found, t.overwrite_output_dir)
    outdir.claim(out, start.fingerprint)
    # The model learned the ids of the tokenizer saved with it: a retrained one could differ.
    tokenizer = spec.tokenizer or (tok.load(str(found.path)) if found else None)

    import transformers

    transformers.set_seed(t.seed)
    prepared = cache.prepare_any(config, spec.family, spec.objective, tokenizer)
    if not prepared.eval_sets():
        reporter.say("no validation data: evaluation is skipped")
    streaming, mix = config.data.streaming, prepared.mixture
    if mix is not None and not streaming:
        mixture.check_sizes(mix, world, t.per_device_train_batch_size)
    n_train = None if streaming else mix.epoch_length() if mix else len(prepared.train)
    plan = schedules.plan(n_train, config, world, one_pass=mix is not None and mix.when_exhausted == "stop")
    if mix is not None and mix.when_exhausted == "stop":
        reporter.say(f"when_exhausted: stop: training ends at step {plan.total_steps} at the latest, when the first "
                     f"source runs out")
    ds = start.ds
    ds_config.set_schedule(ds, config, total_steps=plan.total_steps, warmup_steps=plan.warmup_steps,
                           source=start.ds_source)
    with model.partitioned(ds):
        module = model.build(config, spec, prepared.tokenizer)
    if t.block_attention and not t.torch_compile:  # a compiled graph gets SDPA, which dynamo knows
        attention.use(module)
    if t.fused_gelu:
        activations.fuse(module)
    resume_from = checkpoint.load_dir(found, ds, world, reporter.say) if found else None
    # ZeRO-3's partitioned backward expects the projection's own output in the graph: the plain head there
    forward = objectives.Forward(module, spec.objective,
                                 chunked=t.chunked_cross_entropy and ds_config.zero_stage(ds) != 3)
    eng = engine.build(module, ds, config, plan)
    torch.manual_seed(t.seed + rank)  # same initial weights on every rank, different masks and dropout per rank
    progress = Progress()
    if found:
        progress = checkpoint.resume(eng, found, resume_from, world)
        if streaming:  # each reader goes straight to its position: nothing consumed is read again
            progress.epoch, progress.samples_in_epoch = prepared.train.restore(found.state.get("stream")), 0
        reporter.say(f"resumed from {found.path} at step {progress.step} ({progress.samples} samples seen)")
        reporter.resumed(progress.step)

    end = documents.end_id(prepared.tokenizer) if config.data.reset_attention_mask else None
    collate = objectives.Collator(spec.objective, prepared.tokenizer, config.objective, config.data.max_seq_length,
                                  document_end=end)
    micro = t.per_device_train_batch_size
    if streaming:
        position = prepared.train
    elif mix is not None:
        position = mixture.MixtureSampler(mix, world, rank, t.seed, micro)
    else:
        position = sampler.ResumableSampler(len(prepared.train), world, rank, t.seed, micro)
    # The loader's own generator: making an iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would diverge from one that never stopped.
    loader_rng = torch.Generator()
    loader_rng.manual_seed(t.seed + rank)
    # Lists of samples: sampler.micro_batches collates them in this process (see there).
    loader = DataLoader(prepared.train, batch_size=micro, sampler=None if streaming else position,
                        collate_fn=list, drop_last=True, num_workers=t.dataloader_num_workers,
                        generator=loader_rng,
                        # a stream's workers must see each pass's number: no persistent workers
                        persistent_workers=t.dataloader_num_workers > 0 and not streaming)

    stage = ds_config.zero_stage(ds)
    # Each node has one local rank 0 (hostnames can repeat: containers, namespaces, several slurmd).
    nodes = sum(dist.all_gather_object(dist.local_rank() == 0))
    facts = {"world_size": world, "nodes": nodes, "zero_stage": stage, "objective": spec.objective,
             "model_type": spec.family, "data_fingerprint": prepared.fingerprint,
             "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters()),
             "tokens_per_step": micro * t.gradient_accumulation_steps * world * config.data.max_seq_length,
             "sources": dict(zip(mix.names, mix.weights, strict=True)) if mix else None}
    state_facts = {k: facts[k] for k in ("world_size", "zero_stage", "objective", "model_type", "data_fingerprint")}
    checkpointer = Checkpointer(checkpoints, {**state_facts, "config": redact.redact(config.to_dict())},
                                save_steps=t.save_steps, limit=t.save_total_limit, milestone=t.save_milestone_steps)
    evaluator = Evaluator(prepared.eval_sets(), collate, spec.objective, t.per_device_eval_batch_size, t.seed,
                          t.eval_steps, forward)
    return Parts(eng, module, prepared, forward, loader, collate, position, plan, progress, found, checkpoints,
                 checkpointer, evaluator, facts)


def sources_added(parts: Parts, tokens: list[int]) -> dict[str, int]:
    """Each training source's tokens so far, with `tokens` (one count per source) added."""
    names = parts.prepared.mixture.names if parts.prepared.mixture else ()
    tokens = tokens or [0] * len(names)
    return {name: parts.progress.tokens_by_source.get(name, 0) + n for name, n in zip(names, tokens, strict=True)}


def save(parts: Parts, reporter: Reporter, unlogged_tokens: tuple[int, list[int]]) -> Path:
    """A checkpoint of where training is now (with the tokens since the last log), its cost logged."""
    progress = dataclasses.replace(parts.progress, tokens_seen=parts.progress.tokens_seen + unlogged_tokens[0],
                                   tokens_by_source=sources_added(parts, unlogged_tokens[1]))
    extra = {"stream": parts.position.snapshot()} if isinstance(parts.position, stream.StreamBlocks) else {}
    path = parts.checkpointer.save(parts.engine, parts.module, parts.prepared.tokenizer, progress, extra)
    reporter.log(progress.step, parts.checkpointer.figures())
    return path


def log_checkpoint(config: RunConfig, parts: Parts, reporter: Reporter, path: Path) -> None:
    """--wandb_log_model checkpoint: the checkpoint as a W&B model artifact. Rank 0 consolidates and stages it
    while the other ranks wait outside any collective (whose --dist_timeout a large model could outlast)."""
    if config.logging.log_model != "checkpoint":
        return
    step = parts.progress.step
    reporter.model_saved(path, step, final=False, facts=artifact_facts(parts, parts.progress))
    dist.wait_all(f"artifact/{step}", "rank 0 to log the checkpoint to W&B")


def artifact_facts(parts: Parts, progress: Progress) -> dict[str, Any]:
    f = parts.facts
    return {"tokens_seen": progress.tokens_seen, "objective": f["objective"], "model_type": f["model_type"],
            "parameters": f["parameters"], "zero_stage": f["zero_stage"], "world_size": f["world_size"]}


def loop(config: RunConfig, parts: Parts, reporter: Reporter, guard: nonfinite.Guard, stop: dist.StopFlag,
         profiler: StepProfiler) -> float:
    """Train to the schedule's last step; the seconds it took."""
    t, eng, progress, total = config.train, parts.engine, parts.progress, parts.schedule.total_steps
    gas, samples_per_micro = t.gradient_accumulation_steps, t.per_device_train_batch_size * dist.world_size()
    mix = parts.prepared.mixture
    window = metrics.Window(eng.device, len(mix.names) if mix else 0)
    logger = StepFigures(config, parts, guard)
    batches = sampler.micro_batches(parts.loader, parts.position, progress.epoch, progress.samples_in_epoch,
                                    parts.collate)
    started = time.perf_counter()
    eng.train()
    while progress.step < total:
        logging_now = reporter.should_log(progress.step + 1, total)
        profiler.before(progress.step + 1)
        micro = []
        for _ in range(gas):  # the whole step's batches first: its loss is normalized by all their labels
            epoch, batch = next(batches)
            if epoch != progress.epoch:
                progress.epoch, progress.samples_in_epoch = epoch, 0
            progress.samples += samples_per_micro
            progress.samples_in_epoch += samples_per_micro
            window.add_tokens(batch["attention_mask"].sum(1), batch.pop(mixture.SOURCE, None))
            micro.append(batch)
        result = train_step(eng, parts.forward, parts.module, micro, guard, want_norm=logging_now)
        logger.norm = logger.norm if result.norm is None else result.norm
        progress.step += 1
        profiler.after(progress.step)
        if guard.after_step(progress.step, result.loss_sum):  # a skipped step's loss stays out of the logged mean
            window.add_step(result.loss_sum, result.label_tokens)
        reporter.advance()

        if logging_now:
            reporter.log(progress.step, logger.figures(window))
        if parts.evaluator.should_eval(progress.step, total):
            reporter.evaluated(progress.step, parts.evaluator(eng))
        saved = parts.checkpointer.should_save(progress.step, total)
        stopping = progress.step != total and stop.agreed()
        if saved:
            path = save(parts, reporter, unlogged(window))
            if not stopping:  # a job told to stop has a grace period to leave in, not to upload a model
                log_checkpoint(config, parts, reporter, path)
        if stopping:
            path = (parts.checkpoints.root / checkpoint.tag(progress.step) if saved
                    else save(parts, reporter, unlogged(window)))
            raise Stopped(f"stopped by {stop.requested or 'a signal on another rank'} at step {progress.step}; "
                          f"checkpoint {path} is committed: run the same command to resume")
    return time.perf_counter() - started


def unlogged(window: metrics.Window) -> tuple[int, list[int]]:
    """Input tokens since the last log, in all and per source (collectives)."""
    return window.unlogged_tokens(), window.unlogged_by_source()


class StepFigures:
    """The train figures of a logging step: loss and tokens of the window, learning rate, gradient
    norm, throughput, MFU (GPUs), memory."""

    def __init__(self, config: RunConfig, parts: Parts, guard: nonfinite.Guard) -> None:
        self.parts, self.guard = parts, guard
        t = config.train
        samples_per_micro = t.per_device_train_batch_size * dist.world_size()
        self.samples_per_step = samples_per_micro * t.gradient_accumulation_steps
        self.samples_per_epoch = (parts.schedule.micro_per_epoch or 0) * samples_per_micro  # 0: a stream
        self.last_step = parts.progress.step
        self.norm: torch.Tensor | None = None  # dslm's own gradient norm (ZeRO-0), when it computed one
        precision = "bf16" if t.bf16 else "fp16" if t.fp16 else "fp32"
        self.peak = metrics.peak_flops(precision)
        mc = parts.module.config
        self.n_layers, hidden = getattr(mc, "num_hidden_layers", None), getattr(mc, "hidden_size", None)
        self.per_token = metrics.flops_per_token(parts.facts["parameters"], self.n_layers or 0, hidden or 0,
                                                 config.data.max_seq_length, parts.facts["objective"])

    def figures(self, window: metrics.Window) -> dict[str, Any]:
        progress, eng = self.parts.progress, self.parts.engine
        loss, tokens, seconds = window.take()
        progress.tokens_seen += tokens  # real tokens on all ranks, padding excluded
        progress.tokens_by_source = sources_added(self.parts, window.by_source)
        steps, self.last_step = progress.step - self.last_step, progress.step
        norm = eng.get_global_grad_norm() if self.guard.zero else self.norm
        figures = {
            "train/loss": loss,
            "train/learning_rate": eng.get_lr()[0],
            "train/grad_norm": float(norm) if norm is not None else None,
            "train/epoch": progress.samples / self.samples_per_epoch if self.samples_per_epoch else progress.epoch,
            "train/tokens_seen": progress.tokens_seen,
            **{f"train/tokens_seen/{name}": n for name, n in progress.tokens_by_source.items()},
            "perf/tokens_per_second": tokens / seconds,
            "perf/samples_per_second": steps * self.samples_per_step / seconds,
            "perf/step_time": seconds / steps,
            "perf/elapsed_s": metrics.elapsed(),
            **self.guard.figures(),
            **metrics.memory_figures(),
        }
        if self.peak and self.n_layers:  # model FLOPs utilisation, GPUs only
            figures["perf/mfu"] = figures["perf/tokens_per_second"] * self.per_token / (self.peak * dist.world_size())
        return figures


def run(config: RunConfig) -> dict[str, Any]:
    t = config.train
    out = Path(t.output_dir)
    dist.fill_launcher_env(os.environ)  # first: which rank this is (srun sets only SLURM_PROCID) and how many
    # A signal while the run starts (a long tokenization, a cache build) stops it after its first step, with a
    # checkpoint and exit 75, like one during training.
    stop = dist.StopFlag()
    stop.install()
    reporter = Reporter(out, enabled=dist.is_main(), logging_steps=t.logging_steps,
                        logging_first_step=t.logging_first_step, log_model=config.logging.log_model)
    start = check(config, reporter)
    dist.init(t.dist_timeout)
    quiet_libraries(reporter.enabled)
    if config.uses_builtin_corpus:
        reporter.say("data: the built-in corpus (Python's pydoc topics); give --train_file or --dataset_name for "
                     "your own")
    parts = build(config, start, reporter)
    write_run_files(config, parts, start.ds, reporter)
    progress, total = parts.progress, parts.schedule.total_steps
    if progress.step >= total:
        return already_trained(parts, out, reporter)

    guard = nonfinite.Guard(parts.engine, t.on_nan, fp16=bool(start.ds.get("fp16", {}).get("enabled")),
                            min_loss_scale=float(start.ds.get("fp16", {}).get("min_loss_scale", 1)),
                            progress=progress, warn=reporter.warn, kept=parts.checkpoints.kept)
    try:
        reporter.start(total, progress.step, open_trackers(config, parts, start, reporter))
        before = parts.evaluator(parts.engine) if progress.step == 0 else {}
        reporter.evaluated(0, before, when="before")
        start_step, start_tokens = progress.step, progress.tokens_seen
        profiler = StepProfiler(profile.parse(t.profile), out, reporter.enabled)
        seconds = loop(config, parts, reporter, guard, stop, profiler)
        results = finish(parts, reporter, out, seconds, (start_step, start_tokens), before)
        if profiler.summary():
            reporter.say(profiler.summary())
        reporter.close(exit_code=0)
        return results
    except BaseException as exc:  # the W&B run records how the job ended, then the error goes on
        reporter.close(exit_code=getattr(exc, "exit_code", 1))
        lost = dist.comm_failure(exc, t.dist_timeout)
        if lost:
            raise PeerLost(f"stopped at step {progress.step}: {lost}; {parts.checkpoints.kept()}: run the same "
                           f"command to resume") from None
        raise


def finish(parts: Parts, reporter: Reporter, out: Path, seconds: float, started_at: tuple[int, int],
           before: dict[str, float]) -> dict[str, Any]:
    """The final eval, the last checkpoint, its export to OUTPUT_DIR/final, results.json and the summary."""
    progress = parts.progress
    reporter.end_progress()
    after = parts.evaluator(parts.engine)
    reporter.evaluated(progress.step, after, when="after")
    final = save(parts, reporter, (0, []))  # the last step is a logging step: no tokens are unlogged
    if dist.is_main():
        export(final, out / "final", check=False, overwrite=True)
        reporter.model_saved(out / "final", progress.step, final=True, facts=artifact_facts(parts, progress))
    dist.wait_all("exported", "rank 0 to export the model")
    results = results_of(parts, started_at, seconds, reporter.last_train_loss, before, after)
    reporter.finished(results, out / "final")
    return results


def results_of(parts: Parts, started_at: tuple[int, int], seconds: float | None, train_loss: float | None,
               before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """`started_at`: the step and tokens seen where this session began; `seconds`: its training time."""
    progress, f = parts.progress, parts.facts
    start_step, start_tokens = started_at
    session_tokens = progress.tokens_seen - start_tokens  # a resumed run's rate is of what it trained itself
    return {
        "objective": f["objective"], "model_type": f["model_type"], "parameters": f["parameters"],
        "world_size": f["world_size"], "nodes": f["nodes"], "zero_stage": f["zero_stage"],
        "data_fingerprint": f["data_fingerprint"],
        "resumed_from_step": start_step or None,
        "sources": {name: {"weight": weight, "tokens": progress.tokens_by_source.get(name, 0)}
                    for name, weight in (f["sources"] or {}).items()} or None,
        "train": {"steps": progress.step, "samples": progress.samples, "tokens": progress.tokens_seen,
                  "loss": train_loss, "skipped_steps": progress.skipped_steps, "runtime_s": seconds,
                  "tokens_per_second": session_tokens / seconds if seconds else None,
                  # from the run's first start (run.json) to now: start-ups, evaluations and any downtime
                  "wall_s": time.time() - f["started"] if f.get("started") else None},
        "eval_before": before, "eval": after,
    }


def open_trackers(config: RunConfig, parts: Parts, start: Start, reporter: Reporter) -> list[Any]:
    """The job's trackers, on global rank 0 only; a resumed or restarted run continues its own."""
    if not reporter.enabled:
        return []
    f = parts.facts
    facts = {**f, "ranks_per_node": f["world_size"] // f["nodes"], "total_steps": parts.schedule.total_steps,
             "train_examples": None if config.data.streaming else len(parts.prepared.train),
             "eval_examples": sum(len(v) for v in parts.prepared.eval_sets().values())}
    resumed_at = parts.progress.step if parts.found or start.rerun else None
    return trackers.start(config, start.ds, facts, Path(config.train.output_dir), resumed_at, reporter.say)


def quiet_libraries(main: bool) -> None:
    import transformers

    transformers.logging.set_verbosity_error()  # advisory warnings; dslm reports what matters
    transformers.utils.logging.disable_progress_bar()
    if not main:
        import datasets

        datasets.disable_progress_bars()


def write_run_files(config: RunConfig, parts: Parts, ds: dict[str, Any], reporter: Reporter) -> None:
    """ds_config.json, run_config.json and the start-up lines; a fresh run clears the previous run's outputs
    only now, once it is ready to train."""
    t, f = config.train, parts.facts
    out = Path(t.output_dir)
    if dist.is_main():
        if not parts.found:
            outdir.clear_previous_run(out, checkpoints=t.overwrite_output_dir)
        elif parts.progress.step < parts.schedule.total_steps:  # training further: the last export is stale
            outdir.clear_results(out)
        (out / "ds_config.json").write_text(json.dumps(ds, indent=2))
        # Settings only, by section: the file is itself a valid --config that reproduces the run.
        (out / "run_config.json").write_text(json.dumps(redact.redact(
            {**config.to_dict(), GIVEN_KEY: sorted(config.given)}), indent=2))
        f["started"] = write_run_facts(out, parts)  # rank 0's results.json counts its wall time from it
        for scratch in out.glob(f"{SCRATCH_PREFIX}*"):  # a consolidated copy a kill left behind
            shutil.rmtree(scratch, ignore_errors=True)
    n_train = "streamed" if config.data.streaming else len(parts.prepared.train)
    n_eval = sum(len(v) for v in parts.prepared.eval_sets().values())
    ranks = f"{f['world_size']} rank{'s' if f['world_size'] > 1 else ''} on {metrics.device_name()}"
    reporter.say(f"{f['objective']} | {f['model_type']} {f['parameters'] / 1e6:.2f}M params | ZeRO-{f['zero_stage']} | "
                 f"{ranks} | {n_train} train / {n_eval} eval examples of "
                 f"{config.data.max_seq_length} tokens | {parts.schedule.total_steps} steps of {f['tokens_per_step']} "
                 f"tokens | output {out}")
    reporter.say(checkpoint.estimate_line(parts.checkpoints.root, f["parameters"], t.bf16 or t.fp16,
                                          t.save_total_limit))


def write_run_facts(out: Path, parts: Parts) -> float:
    """run.json: what the run is, settled at its start (what `dslm runs` shows of a run still training), and
    when its first process began (a resumed run keeps it); returns that time."""
    path = out / run_files.RUN_FACTS
    started = None
    if parts.found and path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            started = json.loads(path.read_text()).get("started")
    f = parts.facts
    facts = {key: f[key] for key in ("objective", "model_type", "parameters", "world_size", "nodes", "zero_stage",
                                     "tokens_per_step", "sources")}
    started = started or time.time() - metrics.elapsed()  # when this process began
    atomic.write_file(path, json.dumps({**facts, "total_steps": parts.schedule.total_steps,
                                        "device": metrics.device_name(), "started": started}, indent=2))
    return started


def already_trained(parts: Parts, out: Path, reporter: Reporter) -> dict[str, Any]:
    """A restart after the last step: what a kill between the last commit and the end left undone (the
    export, results.json) is done now."""
    reporter.say(f"already trained to step {parts.progress.step} of {parts.schedule.total_steps}: nothing to do "
                 f"(raise --max_steps to go further)")
    if dist.is_main() and not (out / "final").exists():
        export(parts.found.path, out / "final", check=False)
        reporter.say(f"exported {parts.found.path} to {out / 'final'}")
        if reporter.log_model != "false":  # its W&B run had ended with the kill
            reporter.warn(f"the final model was not logged to W&B (the run stopped before it could be): log "
                          f"{out / 'final'} by hand if you need it")
    dist.wait_all("exported", "rank 0 to export the model")
    results = dist.broadcast(reporter.results())  # only rank 0's Reporter reads files
    if not results:  # the final figures from the checkpoint and the log; the training time is not known
        after = parts.evaluator(parts.engine)
        results = results_of(parts, (parts.progress.step, parts.progress.tokens_seen), None,
                             reporter.logged("train/loss"),
                             reporter.logged_eval(0), after)
        reporter.finished(results, out / "final")
    return results
