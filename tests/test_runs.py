"""`dslm runs`: one row per run from the files in its output directory, finished or still training."""

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import dslm, results, tiny_flags

from dslm import runs
from dslm.config import RunConfig
from dslm.errors import ConfigError

STARTED = 1_700_000_000.0


def write_config(out: Path, **flags) -> None:
    config = RunConfig.from_flags(model_type="bert", output_dir=str(out), **flags).to_dict()
    (out / "run_config.json").write_text(json.dumps(config, indent=2))


def write_facts(out: Path, total_steps: int, world_size: int = 1, device: str = "cpu") -> None:
    facts = {"objective": "mlm", "model_type": "bert", "parameters": 1_234_567, "world_size": world_size, "nodes": 1,
             "zero_stage": 2, "tokens_per_step": 2048, "sources": None, "total_steps": total_steps,
             "device": device, "started": STARTED}
    (out / "run.json").write_text(json.dumps(facts, indent=2))


def write_metrics(out: Path, rows: list[dict], torn: bool = False) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (out / "metrics.jsonl").write_text(text + ('{"step": 14, "time": 17000' if torn else ""))


def train_row(step: int, seconds: float, loss: float, tokens_per_second: float, **more) -> dict:
    return {"step": step, "time": STARTED + seconds, "train/loss": loss, "train/learning_rate": 1e-4,
            "train/tokens_seen": step * 2048, "perf/tokens_per_second": tokens_per_second, **more}


def eval_row(step: int, seconds: float, loss: float, **named: float) -> dict:
    row = {"step": step, "time": STARTED + seconds, "eval/loss": loss, "eval/perplexity": 2.0 ** loss,
           "eval/accuracy": 0.1}
    for name, value in named.items():
        row |= {f"eval/{name}/loss": value, f"eval/{name}/perplexity": 2.0 ** value, f"eval/{name}/accuracy": 0.1}
    return row


def write_results(out: Path, steps: int, loss: float, runtime_s: float, after: dict) -> None:
    tokens = steps * 2048
    results = {"objective": "mlm", "model_type": "bert", "parameters": 1_234_567, "world_size": 1, "nodes": 1,
               "zero_stage": 2, "data_fingerprint": "abc", "resumed_from_step": None, "sources": None,
               "train": {"steps": steps, "samples": steps * 16, "tokens": tokens, "loss": loss, "skipped_steps": 0,
                         "runtime_s": runtime_s - 3, "tokens_per_second": tokens / runtime_s, "wall_s": runtime_s},
               "eval_before": {k: v for k, v in after.items()}, "eval": after}
    (out / "results.json").write_text(json.dumps(results, indent=2))


def finished(tmp_path: Path, name: str, runtime_s: float, mfu: float | None = None, **flags) -> Path:
    out = tmp_path / name
    out.mkdir()
    write_config(out, max_steps=100, **flags)
    write_facts(out, 100)
    more = {} if mfu is None else {"perf/mfu": mfu}
    write_metrics(out, [eval_row(0, 5, 8.0), train_row(50, 10, 5.5, 9000.0, **more),
                        train_row(100, 20, 4.25, 9500.0, **more), eval_row(100, 21, 4.5)])
    write_results(out, 100, 4.25, runtime_s, eval_row(100, 21, 4.5))
    return out


def in_progress(tmp_path: Path) -> Path:
    """Killed (or still training) at step 12 of 100, its last line torn: no results.json."""
    out = tmp_path / "c"
    out.mkdir()
    write_config(out, max_steps=100, learning_rate=5e-4, max_seq_length=64)
    write_facts(out, 100)
    write_metrics(out, [eval_row(0, 3, 8.0), train_row(6, 60, 6.5, 800.0), eval_row(6, 61, 6.25),
                        train_row(12, 125.4, 6.0, 812.6)], torn=True)
    return out


def named_sets(tmp_path: Path) -> Path:
    """Two named validation sets: each has its own figures; the plain ones repeat the first set's."""
    out = tmp_path / "d"
    out.mkdir()
    write_config(out, max_steps=100, learning_rate=5e-4, max_seq_length=64)
    write_facts(out, 100)
    after = eval_row(100, 21, 4.0, domain=4.0, web=5.0)
    write_metrics(out, [train_row(100, 20, 4.25, 9500.0), after])
    write_results(out, 100, 4.25, 7200.0 + 125, after)
    return out


@pytest.fixture
def three(tmp_path: Path) -> list[str]:
    """Two finished runs differing in learning_rate and max_seq_length, and one in progress."""
    a = finished(tmp_path, "a", 16.2, learning_rate=5e-4, max_seq_length=64)
    b = finished(tmp_path, "b", 185.0, mfu=0.4123, learning_rate=1e-3, max_seq_length=128)
    return [str(a), str(b), str(in_progress(tmp_path))]


def shown(capsys, run_dirs: list[str], format: str = "markdown") -> str:
    runs.run(run_dirs, format)
    return capsys.readouterr().out


def table(text: str) -> list[dict[str, str]]:
    """A markdown table's rows, cells stripped of their padding."""
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()]
    return [dict(zip(lines[0], line, strict=True)) for line in lines[2:]]


def test_markdown_table_of_finished_and_running_runs(three, capsys):
    a, b, c = three
    lines = shown(capsys, three).splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header == ["run", "status", "objective", "model", "ZeRO stage", "world size", "steps", "tokens",
                      "train loss", "eval loss", "eval perplexity", "tokens/s", "MFU", "wall time", "max_seq_length",
                      "learning_rate"]
    assert lines[1].startswith("|---") and lines[1].endswith("-:|")  # max_seq_length: numbers, aligned right
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert cells == [
        [a, "done", "mlm", "bert 1.23M", "2", "1", "100", "205K", "4.2500", "4.5000", "22.63", "12642", "-", "16s",
         "64", "0.0005"],
        [b, "done", "mlm", "bert 1.23M", "2", "1", "100", "205K", "4.2500", "4.5000", "22.63", "1107", "41.2%",
         "3m05s", "128", "0.001"],
        # the latest figures: step 12's loss and tokens/s, step 6's eval, 125.4 s since the start
        [c, "12/100", "mlm", "bert 1.23M", "2", "1", "12", "24.6K", "6.0000", "6.2500", "76.11", "813", "-",
         "2m05s", "64", "0.0005"],
    ]
    assert len({len(line) for line in lines}) == 1  # padded: the columns line up


def test_json_keeps_numbers_as_numbers(three, capsys):
    a, b, c = json.loads(shown(capsys, three, "json"))
    assert a == {"run": three[0], "status": "done", "objective": "mlm", "model": "bert 1.23M", "ZeRO stage": 2,
                 "world size": 1, "steps": 100, "tokens": 204800, "train loss": 4.25, "eval loss": 4.5,
                 "eval perplexity": 2.0 ** 4.5, "tokens/s": 204800 / 16.2, "MFU": None, "wall time": 16.2,
                 "learning_rate": 0.0005, "max_seq_length": 64}
    assert (b["MFU"], b["learning_rate"], b["max_seq_length"]) == (0.4123, 0.001, 128)
    assert c["status"] == "12/100" and c["steps"] == 12 and c["tokens"] == 12 * 2048
    assert c["tokens/s"] == 812.6 and c["wall time"] == pytest.approx(125.4)


def test_csv_has_a_header_and_raw_values(three, capsys):
    rows = list(csv.DictReader(io.StringIO(shown(capsys, three, "csv"))))
    assert [r["run"] for r in rows] == three
    assert rows[0]["tokens"] == "204800" and rows[0]["wall time"] == "16.2" and rows[0]["MFU"] == ""
    assert rows[2]["status"] == "12/100" and rows[2]["train loss"] == "6.0"
    assert [r["learning_rate"] for r in rows] == ["0.0005", "0.001", "0.0005"]


def test_one_run_shows_no_settings_and_no_mfu(tmp_path, capsys):
    a = finished(tmp_path, "a", 16.2, learning_rate=5e-4)
    (row,) = json.loads(shown(capsys, [str(a)], "json"))
    assert list(row)[-1] == "wall time" and "MFU" not in row


def test_named_validation_sets_get_a_pair_each(tmp_path, capsys):
    d = str(named_sets(tmp_path))
    (row,) = json.loads(shown(capsys, [d], "json"))
    assert "eval loss" not in row  # the first set's figure again
    assert (row["eval loss (domain)"], row["eval perplexity (web)"]) == (4.0, 32.0)
    assert table(shown(capsys, [d]))[0]["wall time"] == "2h02m"
    # beside a single-set run the plain pair is shown too, for both
    a = str(finished(tmp_path, "a", 16.2, learning_rate=5e-4, max_seq_length=64))
    rows = json.loads(shown(capsys, [a, d], "json"))
    assert [r["eval loss"] for r in rows] == [4.5, 4.0]
    assert [r["eval loss (web)"] for r in rows] == [None, 5.0]
    assert "learning_rate" not in rows[0]  # the same settings: no setting columns


def test_a_run_with_only_metrics_shows_what_it_can(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    write_metrics(out, [eval_row(0, 1, 8.0), train_row(4, 2, 7.0, 100.0)])  # before training: not shown
    (row,) = json.loads(shown(capsys, [str(out)], "json"))
    assert (row["status"], row["steps"], row["train loss"], row["model"], row["wall time"]) == ("4/?", 4, 7.0, None,
                                                                                                   None)
    (cells,) = table(shown(capsys, [str(out)]))
    assert (cells["status"], cells["model"], cells["eval loss"], cells["wall time"]) == ("4/?", "-", "-", "-")


def test_bad_input_is_one_line_with_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "empty")], "markdown",
         f"{tmp_path / 'empty'} is not a dslm run (no run_config.json or metrics.jsonl): give the --output_dir of a "
         f"dslm train run"),
        ([str(tmp_path / "missing")], "markdown",
         f"{tmp_path / 'missing'} does not exist or is not a directory: give the --output_dir of a dslm train run"),
        ([], "markdown", "give at least one run directory: dslm runs RUN_DIR [RUN_DIR ...] [--format csv|json]"),
        ([str(tmp_path / "empty")], "xml", "unknown --format xml: give csv|json|markdown"),
    ]
    for run_dirs, format, message in cases:
        with pytest.raises(ConfigError) as err:
            runs.run(run_dirs, format)
        assert str(err.value) == message


def test_cli_prints_a_bad_directory_as_one_line(tmp_path, capsys):
    from dslm.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["runs", str(tmp_path / "missing")])
    assert exit.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("dslm: error: ")


@pytest.mark.slow
def test_runs_of_two_real_runs(tmp_path):
    dirs = []
    for name, lr in (("a", "2e-3"), ("b", "5e-3")):
        out = tmp_path / name
        dslm("train", *tiny_flags("gpt2", out, "--learning_rate", lr, "--report_to", "none", steps=4))
        dirs.append(out)
    rows = json.loads(dslm("runs", str(dirs[0]), str(dirs[1]), "--format", "json").stdout)
    for row, out in zip(rows, dirs, strict=True):
        done = results(out)
        assert row["status"] == "done" and row["model"].startswith("gpt2 ") and row["objective"] == "clm"
        assert (row["steps"], row["tokens"], row["train loss"]) == (done["train"]["steps"], done["train"]["tokens"],
                                                                   done["train"]["loss"])
        assert (row["eval loss"], row["wall time"]) == (done["eval"]["eval/loss"], done["train"]["wall_s"])
    assert list(rows[0])[list(rows[0]).index("wall time") + 1:] == ["learning_rate"]
    assert [r["learning_rate"] for r in rows] == [2e-3, 5e-3]
    proc = dslm("runs", "/nonexistent", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["dslm: error: /nonexistent does not exist or is not a directory: give the "
                                        "--output_dir of a dslm train run"]
