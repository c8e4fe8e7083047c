"""Units: counted once, read back by range, split deterministically."""

import pytest
from datasets import Dataset

from dslm.data import units
from dslm.data.sources import Raw
from dslm.errors import ConfigError

TEXTS = ["first text\nwith two lines", "", "   ", None, "third\n\n\nfour lines\nhere\nend", "x" * 5000, "last one"]


def _raw(texts=TEXTS):
    return Raw.of(Dataset.from_dict({"text": texts}), "text")


@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("chunk_bytes", [10, 100, 1 << 20])
def test_any_range_reads_the_units_of_the_whole(monkeypatch, line_by_line, chunk_bytes):
    monkeypatch.setattr(units, "CHUNK_BYTES", chunk_bytes)
    counted = units.count(_raw(), line_by_line)
    everything = [u for part in counted.read(0, counted.total) for u in part]
    if line_by_line:
        assert everything == ["first text", "with two lines", "third", "four lines", "here", "end", "x" * 5000,
                              "last one"]
    else:
        assert everything == [TEXTS[0], TEXTS[4], TEXTS[5], TEXTS[6]]
    for start in range(counted.total + 1):
        for stop in range(start, counted.total + 1):
            assert [u for part in counted.read(start, stop) for u in part] == everything[start:stop]


def test_chunks_are_cut_by_bytes_with_at_least_one_row(monkeypatch):
    monkeypatch.setattr(units, "CHUNK_BYTES", 100)
    sizes = [len(chunk) for chunk in units.chunks(_raw())]
    assert sum(sizes) == len(TEXTS) and len(sizes) > 2  # the 5000-byte text is a chunk of its own


def test_spans_split_into_near_equal_contiguous_parts():
    span = units.Span("train", 3, 20)
    parts = [span.part(i, 4) for i in range(4)]
    assert parts[0].start == 3 and parts[-1].stop == 20
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert {p.stop - p.start for p in parts} <= {4, 5}
    assert [p for i in range(3) for p in [span.part(i, 3).part(j, 2) for j in range(2)]][-1].stop == 20


def test_the_first_percent_of_training_units_is_held_out():
    counted = {"train": units.count(_raw(["a"] * 100), False)}
    spans = units.plan(counted, 5.0)
    assert spans == {"validation": units.Span("train", 0, 5), "train": units.Span("train", 5, 100)}
    assert units.plan(counted, 0.0) == {"train": units.Span("train", 0, 100)}
    counted["validation"] = units.count(_raw(["b"] * 7), False)
    assert units.plan(counted, 5.0) == {"validation": units.Span("validation", 0, 7),
                                        "train": units.Span("train", 0, 100)}
    with pytest.raises(ConfigError, match="the training data has no text"):
        units.plan({"train": units.count(_raw(["", "  "]), False)}, 5.0)


def test_chunks_span_the_small_record_batches_datasets_writes(monkeypatch):
    import pyarrow as pa

    monkeypatch.setattr(units, "CHUNK_BYTES", 1000)
    texts = [f"row {i:04d} " + "w" * (i % 50) for i in range(3000)]
    table = pa.Table.from_batches([pa.record_batch({"text": texts[i:i + 7]}) for i in range(0, 3000, 7)])
    raw = Raw("text", len(texts), [], table)
    got = list(units.chunks(raw))
    assert [t for chunk in got for t in chunk.to_pylist()] == texts
    assert all(sum(map(len, chunk.to_pylist())) <= 1000 for chunk in got)
    assert len(got) < 3000 * 40 // 1000 * 1.1 + 2 < len(table.to_batches())  # filled, not one per batch
