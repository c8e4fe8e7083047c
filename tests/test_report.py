"""The Reporter: when to log, metrics.jsonl rows, console lines, results.json and the closing summary."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import pytest

from dslm.report import Reporter
from dslm.trackers import WandbRun


def rows(reporter: Reporter) -> list[dict]:
    return [json.loads(line) for line in reporter.metrics.read_text().splitlines()]


def train_figures(loss: float | None) -> dict:
    return {"train/loss": loss, "train/learning_rate": 1e-3, "perf/tokens_per_second": 1234.4}


RESULTS = {"train": {"steps": 10, "runtime_s": 4.0, "tokens": 4000, "tokens_per_second": 1000.0, "skipped_steps": 0},
           "eval_before": {"eval/perplexity": 100.0, "eval/accuracy": 0.01},
           "eval": {"eval/perplexity": 50.0, "eval/accuracy": 0.1}}


def test_should_log_every_n_steps_and_the_last(tmp_path):
    r = Reporter(tmp_path, enabled=True, logging_steps=5)
    assert [s for s in range(1, 13) if r.should_log(s, 12)] == [5, 10, 12]
    assert [s for s in range(1, 11) if r.should_log(s, 10)] == [5, 10]


def test_should_log_first_step(tmp_path):
    r = Reporter(tmp_path, enabled=True, logging_steps=5, logging_first_step=True)
    assert [s for s in range(1, 13) if r.should_log(s, 12)] == [1, 5, 10, 12]
    every = Reporter(tmp_path, enabled=True, logging_steps=1)
    assert [s for s in range(1, 4) if every.should_log(s, 3)] == [1, 2, 3]


def test_log_appends_json_lines(tmp_path):
    r = Reporter(tmp_path, enabled=True)
    before = time.time()
    r.log(3, {"eval/loss": 1.5, "eval/tokens": 40})
    r.log(4, {"checkpoint/size_mb": 2.0})
    after = time.time()
    got = rows(r)
    assert [{k: v for k, v in row.items() if k != "time"} for row in got] == [
        {"step": 3, "eval/loss": 1.5, "eval/tokens": 40}, {"step": 4, "checkpoint/size_mb": 2.0}]
    assert all(before <= row["time"] <= after for row in got)
    assert list(got[0]) == ["step", "time", "eval/loss", "eval/tokens"]


def test_train_figures_print_a_line_without_a_terminal(tmp_path, capsys):
    r = Reporter(tmp_path, enabled=True)
    r.start(total_steps=10, step=0, opened=[])  # stderr is captured, not a tty: tqdm disables the bar
    assert r.bar is not None and r.bar.disable is True
    r.log(5, train_figures(2.5))
    r.log(6, train_figures(None))
    r.end_progress()
    assert capsys.readouterr().out == ("step 5: loss 2.5000 lr 1.00e-03 tok/s 1234\n"
                                       "step 6: loss skipped lr 1.00e-03 tok/s 1234\n")
    assert [row["train/loss"] for row in rows(r)] == [2.5, None]
    assert r.last_train_loss is None  # the last window's mean, even a skipped one
    assert r.bar is None


def test_say_and_warn(tmp_path, capsys):
    r = Reporter(tmp_path, enabled=True)
    r.say("hello")
    r.warn("careful")
    r.say("to stderr", file=sys.stderr)
    out = capsys.readouterr()
    assert out.out == "hello\nwarning: careful\n"
    assert out.err == "to stderr\n"


def test_resumed_drops_rows_after_the_step_and_torn_lines(tmp_path):
    r = Reporter(tmp_path, enabled=True)
    lines = [json.dumps({"step": s, "time": 0.0, "train/loss": float(s)}) for s in range(1, 6)]
    lines.insert(2, '{"step": 2, "ti')  # torn by a kill
    lines += ["[1, 2]", '{"no_step": 1}', '{"step": 6, "train/lo']
    r.metrics.write_text("\n".join(lines))  # the last line has no newline either
    r.resumed(3)
    assert [row["step"] for row in rows(r)] == [1, 2, 3]
    assert r.metrics.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_resumed_without_metrics_writes_nothing(tmp_path):
    Reporter(tmp_path, enabled=True).resumed(3)
    assert list(tmp_path.iterdir()) == []


def test_evaluated_before_and_during(tmp_path, capsys):
    r = Reporter(tmp_path, enabled=True)
    figures = {"eval/loss": 2.0, "eval/perplexity": 7.389, "eval/accuracy": 0.25}
    r.evaluated(0, figures, when="before")
    r.evaluated(10, figures)
    r.evaluated(20, figures, when="after")  # the summary shows it: no line
    r.evaluated(30, {})  # no validation set: nothing at all
    assert capsys.readouterr().out == ("eval before training: loss 2.0000 perplexity 7.39 accuracy 0.2500\n"
                                       "step 10: eval loss 2.0000 perplexity 7.39\n")
    assert [(row["step"], row["eval/loss"]) for row in rows(r)] == [(0, 2.0), (10, 2.0), (20, 2.0)]


def test_finished_writes_results_and_the_summary(tmp_path, capsys):
    r = Reporter(tmp_path, enabled=True)
    r.finished(RESULTS, tmp_path / "final")
    assert json.loads((tmp_path / "results.json").read_text()) == RESULTS
    assert capsys.readouterr().out == (f"done: 10 steps in 4s (1000 tokens/s); eval perplexity 100.00 -> 50.00, "
                                       f"accuracy 0.010 -> 0.100; model in {tmp_path / 'final'}\n")
    assert r.results() == RESULTS


@pytest.mark.parametrize(("before", "after", "tail"), [
    ({}, {"eval/perplexity": 50.0, "eval/accuracy": 0.1}, "; eval perplexity 50.00"),
    ({}, {}, ""),
])
def test_finished_summary_without_eval_before(tmp_path, capsys, before, after, tail):
    r = Reporter(tmp_path, enabled=True)
    results = {**RESULTS, "train": {**RESULTS["train"], "skipped_steps": 2}, "eval_before": before, "eval": after}
    r.finished(results, tmp_path / "final")
    assert capsys.readouterr().out == (f"done: 10 steps, 2 skipped for inf/NaN in 4s (1000 tokens/s){tail}; "
                                       f"model in {tmp_path / 'final'}\n")


def test_results_of_a_run_without_results(tmp_path):
    assert Reporter(tmp_path, enabled=True).results() == {}


def test_disabled_reporter_writes_and_prints_nothing(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')  # another rank's view of rank 0's file
    r = Reporter(tmp_path, enabled=False, logging_steps=1)
    r.start(total_steps=10, step=0, opened=[])
    r.say("hello")
    r.warn("careful")
    r.resumed(3)
    r.log(1, train_figures(3.0))
    r.evaluated(1, {"eval/loss": 2.0, "eval/perplexity": 7.389, "eval/accuracy": 0.25}, when="before")
    r.finished(RESULTS, tmp_path / "final")
    r.close(exit_code=0)
    assert capsys.readouterr() == ("", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 9}\n'
    assert r.bar is None
    assert r.last_train_loss == 3.0  # kept on every rank


class FakeWandb:
    name = "W&B"

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.finished_with: int | None = None

    def log(self, step: int, figures: dict) -> None:
        self.logged.append((step, dict(figures)))

    def finish(self, exit_code: int = 0) -> None:
        self.finished_with = exit_code


def test_wandb_gets_one_call_per_step(tmp_path, capsys):
    run = FakeWandb()
    r = Reporter(tmp_path, enabled=True)
    r.start(total_steps=10, step=0, opened=[run])
    r.log(5, train_figures(2.5))
    r.log(5, {"eval/loss": 2.0, "checkpoint/save_seconds": None})  # None is not sent
    assert run.logged == []  # the step may get more figures
    r.log(6, {"eval/loss": 1.9})
    assert run.logged == [(5, {**train_figures(2.5), "eval/loss": 2.0})]
    r.close(exit_code=3)
    assert run.logged[1:] == [(6, {"eval/loss": 1.9})]
    assert run.finished_with == 3
    assert r.trackers == []


def test_a_wandb_service_that_died_does_not_end_the_run(tmp_path, capsys):
    """A job's SIGTERM reaches W&B's service process too: its run then fails every call."""

    class Dead:
        name = "W&B"

        def log(self, step, figures):
            raise BrokenPipeError("the service is gone")

        def finish(self, exit_code):
            raise BrokenPipeError("the service is gone")

    r = Reporter(tmp_path, enabled=True)
    r.start(total_steps=4, step=0, opened=[Dead()])
    r.log(1, {"eval/loss": 1.0})
    r.log(2, {"eval/loss": 0.9})  # a new step sends the last one: W&B fails, once
    r.log(3, {"eval/loss": 0.8})
    r.close(exit_code=75)
    out = capsys.readouterr().out
    assert out.count("warning: W&B stopped (BrokenPipeError: the service is gone); the run goes on") == 1
    assert [row["step"] for row in rows(r)] == [1, 2, 3]


class ArtifactWandb(WandbRun):
    """A W&B run that records the model directories it is given (no wandb process)."""

    def __init__(self) -> None:
        self.models: list[tuple[list[str], dict, list[str]]] = []

    def log(self, step: int, figures: dict) -> None:
        pass

    def log_model(self, directory, aliases, metadata) -> None:
        self.models.append((aliases, metadata, sorted(p.name for p in directory.iterdir())))


@pytest.mark.parametrize("mode, logged", [("false", []), ("end", [["latest", "step-8", "final"]]),
                                          ("checkpoint", [["latest", "step-4"], ["latest", "step-8", "final"]])])
def test_which_models_each_mode_logs(tmp_path, monkeypatch, mode, logged):
    from dslm import export

    @contextlib.contextmanager
    def temporary(checkpoint_dir):  # the consolidation itself is export's (tests/test_checkpoint.py)
        model = tmp_path / "consolidated"
        model.mkdir(exist_ok=True)
        (model / "model.safetensors").write_text(checkpoint_dir.name)
        yield model

    monkeypatch.setattr(export, "temporary", temporary)
    final = tmp_path / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    run = ArtifactWandb()
    r = Reporter(tmp_path, enabled=True, log_model=mode)
    r.start(total_steps=8, step=0, opened=[run])
    r.log(4, {"eval/loss": 2.5})
    r.model_saved(tmp_path / "checkpoints" / "step-00000004", 4, final=False, facts={"objective": "clm"})
    r.log(8, {**train_figures(2.0), "eval/loss": 2.25})
    r.model_saved(final, 8, final=True, facts={"objective": "clm"})
    assert [aliases for aliases, _, _ in run.models] == logged
    for aliases, metadata, files in run.models:
        step = int(aliases[1].removeprefix("step-"))
        assert metadata["step"] == step and metadata["objective"] == "clm"
        assert metadata["eval/loss"] == {4: 2.5, 8: 2.25}[step]
        assert files == (["config.json"] if "final" in aliases else ["model.safetensors"])


def test_a_model_that_cannot_be_logged_is_a_warning(tmp_path, capsys):
    class Failing(ArtifactWandb):
        def log_model(self, directory, aliases, metadata) -> None:
            raise OSError("no space left on device")

    run = Failing()
    r = Reporter(tmp_path, enabled=True, log_model="end")
    r.start(total_steps=2, step=0, opened=[run])
    r.model_saved(tmp_path, 2, final=True, facts={})
    assert "warning: the model of step 2 was not logged to W&B (OSError: no space left on device); the run goes on" \
        in capsys.readouterr().out
    assert r.trackers == [run]  # the run's metrics still go to W&B
