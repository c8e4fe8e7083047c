"""Shared helpers: tiny models per family and real launches of dslm in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The in-process tests run torch on one thread. Tests that fork a dslm run (tests/forked.py) come after some that
# compute in this process; with 2 threads here, the OpenMP pool they started is inherited by every forked child
# and its first parallel op waits forever on threads that do not exist there (seen: a forked run stuck in
# DeepSpeed's optimizer set-up after tests/test_attention.py). With one thread no pool is ever started here.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = str(ROOT / "launch" / "train.py")

# A few hundred thousand parameters: each family trains for real in seconds on a CPU.
TINY = {
    "bert": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
    "roberta": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
    "distilbert": "dim=32,n_layers=2,n_heads=2,hidden_dim=64",
    "gpt2": "n_embd=32,n_layer=2,n_head=2",
    "xlnet": "d_model=32,n_layer=2,n_head=2,d_inner=64",
}


TINY.update({
    "llama": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,num_key_value_heads=1,intermediate_size=64",
    "qwen2": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,num_key_value_heads=1,intermediate_size=64",
    "mistral": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,num_key_value_heads=1,intermediate_size=64",
    "modernbert": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
})


def tiny_flags(family: str, output_dir: Path, *extra: str, steps: int = 6) -> list[str]:
    return ["--model_type", family, "--config_overrides", TINY[family], "--vocab_size", "600",
            "--max_seq_length", "64", "--max_steps", str(steps), "--logging_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "2e-3",
            "--max_eval_samples", "32", "--output_dir", str(output_dir), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    e["PYTHONUNBUFFERED"] = "1"
    # W&B's service costs each launch seconds: on only where a test asks for it (the W&B and multi-node tests)
    e.setdefault("WANDB_MODE", "disabled")
    e.pop("RANK", None)
    e.pop("LOCAL_RANK", None)
    e.pop("WORLD_SIZE", None)
    return e


def run(cmd: list[str], cwd: Path = ROOT, timeout: int = 300, check: bool = True,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # A session of its own: on a timeout the launcher's ranks are killed with it, not left to load the machine.
    with subprocess.Popen(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            out, err = popen.communicate()
            raise AssertionError(f"{' '.join(cmd)} ran over {timeout} s\n--- stdout\n{out[-4000:]}\n--- stderr\n"
                                 f"{err[-6000:]}") from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def dslm(*args: str, **kw) -> subprocess.CompletedProcess:
    exe = shutil.which("dslm") or str(Path(sys.executable).parent / "dslm")
    return run([exe, *args], **kw)


def deepspeed_exe() -> str:
    """The launcher of this interpreter's environment, also when that environment is not activated."""
    return shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")


def deepspeed(nproc: int, *args: str, **kw) -> subprocess.CompletedProcess:
    exe = deepspeed_exe()
    return run([exe, "--num_gpus", str(nproc), "--master_port", str(free_port()), LAUNCH, *args], **kw)


def torchrun(nproc: int, *args: str, **kw) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return run([exe, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), LAUNCH, *args], **kw)


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(output_dir: Path) -> list[float]:
    return [m["train/loss"] for m in metrics(output_dir) if "train/loss" in m]


def results(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.json").read_text())


@pytest.fixture(autouse=True)
def fast_tests_stay_in_process(request, monkeypatch):
    """The fast tier (`-m "not slow"`) is in-process unit tests: a test that starts a process or a process
    group fails here until it is marked slow, so the tier cannot grow slow unnoticed."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process or a process group: mark it "
                             f"@pytest.mark.slow")

    import multiprocessing.util

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse)
    monkeypatch.setattr("torch.distributed.init_process_group", refuse)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Trained tokenizers are cached per user; tests share one cache of their own."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(autouse=True)
def single_process_env(monkeypatch):
    """In-process tests run as a lone rank 0, whatever launched pytest."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    from dslm.data.sources import builtin_texts

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(builtin_texts()[:30]))
    return path


def prepare_data(tmp_path: Path, **flags):
    """The tokenizer and tokenized splits a run with these flags trains on, built in this process (a tiny
    BERT's vocabulary by default)."""
    from dslm import model
    from dslm.config import RunConfig
    from dslm.data import cache

    flags.setdefault("output_dir", str(tmp_path / "out"))
    flags.setdefault("model_type", "bert")
    flags.setdefault("vocab_size", 500)
    config = RunConfig.from_flags(**flags)
    spec = model.resolve(config)
    return cache.prepare(config, spec.family, spec.objective, spec.tokenizer)


def reload_and_evaluate(out: Path, objective: str) -> float:
    """Eval loss of OUTPUT_DIR/final loaded by transformers alone, on the batches the engine evaluated (the
    run's own validation cache, eval batch size, sample limit and seed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from dslm import evaluation, objectives
    from dslm.config import ObjectiveConfig
    from dslm.data import slices

    run_config = json.loads((out / "run_config.json").read_text())
    model = (AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM).from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    data_dir = out / "cache" / f"tokenized-{results(out)['data_fingerprint']}"
    block = None if run_config["data"]["line_by_line"] else run_config["data"]["max_seq_length"]
    params = json.loads((data_dir / "slice-00000-of-00001" / "dslm_cache.json").read_text())["params"]
    validation = slices.load([data_dir / "slice-00000-of-00001"], params, block)["validation"]
    limit = run_config["data"]["max_eval_samples"] or len(validation)
    validation = validation.select(range(min(limit, len(validation)))).with_format("python")
    collate = objectives.Collator(objective, tokenizer, ObjectiveConfig(**run_config["objective"]),
                                  run_config["data"]["max_seq_length"])
    train = run_config["train"]
    figures = evaluation.evaluate(model, validation, collate, objective, train["per_device_eval_batch_size"],
                                  torch.device("cpu"), train["seed"])
    return figures["eval/loss"]
