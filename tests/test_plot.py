"""`dslm plot`: curves of several runs from their metrics.jsonl."""

import pytest
from conftest import dslm, tiny_flags

pytestmark = pytest.mark.slow  # trains two runs


def test_plot_draws_one_line_per_run(tmp_path):
    from dslm import plot

    runs = []
    for name, lr in (("a", "2e-3"), ("b", "5e-3")):
        out = tmp_path / name
        dslm("train", *tiny_flags("gpt2", out, "--learning_rate", lr, "--report_to", "none", steps=4))
        runs.append(out)
    png = tmp_path / "curves.png"
    proc = dslm("plot", str(runs[0]), str(runs[1]), "--out", str(png))
    assert "wrote" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    fig = plot.figure(runs)
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
