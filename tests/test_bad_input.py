"""Bad input fails fast: one line naming the problem and the fix, a non-zero exit, no traceback, and
nothing written to the output directory when the problem is visible before any work.

Each case runs `dslm train` in a forked child of this process (tests/forked.py): a real process
that may reach the process group and exit through `os._exit`, started in milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import forked
import pytest
from conftest import TINY, free_port, tiny_flags
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dslm import cli
from dslm.data.sources import builtin_texts

pytestmark = pytest.mark.slow  # each case runs dslm in a forked process, some train

CORPUS = "\n\n".join(builtin_texts()[:30])
QUIET = ("--report_to", "none")


def error_line(result: forked.Result) -> str:
    """The one `dslm: error:` line, last on stderr; earlier lines may only be progress bars of real work."""
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dslm: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.err[-3000:]
    return errors[0]


def refused(args: list[str], message: str, *, before_work: bool = True, env: dict[str, str] | None = None,
            code: int = 2) -> str:
    """Run `dslm train ARGS`; assert it fails with `message` in one line (and only that line when the
    problem shows before any work). Returns the line."""
    result = forked.run(["train", *QUIET, *args], env=env)
    assert result.code == code, (result.code, result.err[-3000:])
    line = error_line(result)
    assert message in line, line
    if before_work:
        assert [ln for ln in result.err.splitlines() if ln.strip()] == [line], result.err
    return line


@pytest.fixture(scope="module", autouse=True)
def warm_imports(tmp_path_factory):
    """transformers and datasets import model and builder modules lazily: import them once here, so the
    forked children do not each pay seconds for it."""
    import datasets

    from dslm import model, objectives
    from dslm.config import RunConfig

    # Where DeepSpeed's JIT ops are cached, as for the subprocess launches (conftest.env): one build.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))

    for family, objective in (("bert", "mlm"), ("roberta", "mlm"), ("distilbert", "mlm"), ("gpt2", "clm"),
                              ("xlnet", "plm")):
        config = RunConfig.from_flags(model_type=family, config_overrides=TINY[family], objective=objective)
        model.resolve(config)
        objectives.auto_class(objective)
    tmp = tmp_path_factory.mktemp("warm")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x"]}), tmp / "a.parquet")
    for name, text in (("a.txt", "x\n"), ("a.json", '{"text": "x"}\n'), ("a.csv", "text\nx\n"), ("a.parquet", None)):
        if text is not None:
            (tmp / name).write_text(text)
        next(iter(datasets.load_dataset(Path(name).suffix[1:].replace("txt", "text"), data_files=str(tmp / name),
                                        split="train", streaming=True)))
    import deepspeed  # noqa: F401
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: F401


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def tiny(out: Path, *extra: str, family: str = "bert", steps: int = 1) -> list[str]:
    return tiny_flags(family, out, *extra, steps=steps)


# ---------------------------------------------------------------- files

def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_data_files_that_cannot_be_used(tmp_path, out):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = "".join(json.dumps({"body": "some text", "title": "a title", "n": 1}) + "\n" for _ in range(5))
    pq.write_table(pa.table({"n": [1, 2, 3]}), tmp_path / "numbers.parquet")
    (tmp_path / "folder.txt").mkdir()
    cases = [
        (tmp_path / "missing.txt", "no such file; check the path"),
        (write(tmp_path / "empty.txt", ""), "is empty: give a file with text"),
        (tmp_path / "folder.txt", "is a directory: give a file"),
        (write(tmp_path / "data.xml", "<a/>"), "unsupported file type '.xml'"),
        (write(tmp_path / "latin1.txt", "café\n".encode("latin-1") + CORPUS.encode()),
         "is not UTF-8 text (byte 0xe9 at offset 3): convert it, e.g. iconv -f LATIN1 -t UTF-8"),
        (write(tmp_path / "rows.json", rows), "has no 'text' column and 2 string columns (body, title): "
                                              "pass --text_column NAME"),
        (write(tmp_path / "numbers.csv", "a,b\n1,2\n"), "has no 'text' column and 0 string columns"),
        (tmp_path / "numbers.parquet", "has no 'text' column and 0 string columns"),
        (write(tmp_path / "noise.parquet", os.urandom(300)), "cannot be read as parquet (ArrowInvalid"),
        (write(tmp_path / "noise.json", b"\x00garbage{"), "cannot be read as json"),
    ]
    for path, message in cases:
        refused([*tiny(out), "--train_file", str(path)], message)
    for path, message in cases[::4]:  # the same checks, named by the flag
        line = refused([*tiny(out), "--train_file", str(CORPUS_FILE(tmp_path)), "--validation_file", str(path)],
                       message)
        assert "--validation_file" in line
    refused([*tiny(out), "--train_file", str(tmp_path / "rows.json"), "--text_column", "txt"],
            "has no column 'txt' (columns: body, title, n): pass --text_column with one of them")
    assert not out.exists()


def test_data_specs_that_cannot_be_used(tmp_path, out):
    """Each mistake in a data spec, one line, before anything is written (rows of docs/errors.md)."""
    good = write(tmp_path / "good.txt", CORPUS)
    rows = write(tmp_path / "rows.jsonl", json.dumps({"body": "text", "title": "t"}) + "\n")
    write(tmp_path / "empty.txt", "")
    cases = [
        ("s.yaml", "train: [\n  {path: GOOD\n", "is not valid YAML"),
        ("s.json", '{"train": [{"path": "GOOD"}],}', "is not valid JSON"),
        ("s.yaml", "train:\n  - {path: GOOD, wieght: 2}\n", "unknown key 'wieght' (did you mean 'weight'?)"),
        ("s.yaml", "train:\n  - {path: DIR/nope.txt}\n", "no such file"),
        ("s.yaml", "train:\n  - {path: ROWS}\n", "has no 'text' column and 2 string columns"),
        ("s.yaml", "train:\n  - {path: GOOD, weight: 0}\n", "weight 0 must be a positive number"),
        ("s.yaml", "train:\n  - {path: GOOD, weight: -2}\n", "weight -2 must be a positive number"),
        ("s.yaml", "train:\n  - {path: GOOD, weight: much}\n", "weight 'much' must be a positive number"),
        ("s.yaml", "train:\n  - {path: DIR/empty.txt}\n", "is empty: give a file with text"),
        ("s.yaml", "train:\n  - {path: GOOD}\nvalidation:\n  v: GOOD\n  v: GOOD\n", "'v' is given twice"),
    ]
    for name, text, message in cases:
        text = text.replace("GOOD", str(good)).replace("ROWS", str(rows)).replace("DIR", str(tmp_path))
        refused([*tiny(out), "--data_spec", str(write(tmp_path / name, text))], message)
    refused([*tiny(out), "--train_file", str(good), "--validation_file", f"v={good},v={good}"],
            "names the validation set 'v' twice")
    refused([*tiny(out, family="xlnet"), "--reset_attention_mask"], "--reset_attention_mask needs a model family")
    assert not out.exists()


def test_slices_that_cannot_be_used(tmp_path, out):
    cache = ["--cache_dir", str(tmp_path / "cache")]
    for args, message in ((["--num_shards", "2", "--shard_index", "2"], "--shard_index 2 is out of range for "
                                                                         "--num_shards 2: use 0 to 1"),
                          (["--num_shards", "0"], "--num_shards must be at least 1"),
                          (["--tokenizer_train_samples", "0"], "--tokenizer_train_samples must be at least 1")):
        result = forked.run(["prepare", "--output_dir", str(out), *cache, *args])
        assert result.code == 2 and message in error_line(result), result.err[-2000:]
    assert not out.exists() and not (tmp_path / "cache").exists()
    refused([*tiny(out), *cache, "--num_shards", "2", "--shard_index", "0"], "it is for `dslm prepare`")
    refused([*tiny(out), *cache, "--num_shards", "2"], "no slice of 2 is prepared")
    assert not out.exists()


def CORPUS_FILE(tmp_path: Path) -> Path:  # noqa: N802 - reads as a constant at the call sites
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text(CORPUS)
    return path


def test_a_wrong_encoding_in_the_last_mib_is_found_without_reading_the_middle(tmp_path, out):
    body = ("plain ascii text\n" * 200_000).encode()  # 3.4 MB
    path = write(tmp_path / "tail.txt", body + "naïve\n".encode("latin-1"))
    line = refused([*tiny(out), "--train_file", str(path)], "is not UTF-8 text (byte 0xef at offset")
    assert str(len(body) + 2) in line  # the offset in the file, not in the sampled tail


def test_a_wrong_encoding_deep_in_the_file_is_one_line_too(tmp_path, out):
    """Past the sampled first and last MiB the checks cannot see it: datasets' error while loading is
    turned into the same one line."""
    line = b"some plain words for the corpus\n"
    path = write(tmp_path / "middle.txt", line * (2 * 2**20 // len(line)) + "café\n".encode("latin-1")
                 + line * (2 * 2**20 // len(line)))
    refused([*tiny(out), "--train_file", str(path)], "is not UTF-8 text (byte 0xe9: invalid continuation byte): "
            "convert it, e.g. iconv -f LATIN1 -t UTF-8", before_work=False)


def test_an_unreadable_file_is_named(tmp_path, out):
    path = write(tmp_path / "secret.txt", CORPUS)
    path.chmod(0)
    message = f"--train_file {path} cannot be read (Permission denied): check its permissions, e.g. chmod a+r"
    if os.geteuid() != 0:
        refused([*tiny(out), "--train_file", str(path)], message)
        return
    # Root reads mode-000 files through CAP_DAC_OVERRIDE: drop it (and CAP_DAC_READ_SEARCH) for the child.
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv (util-linux) cannot drop CAP_DAC_OVERRIDE to test an unreadable file")
    proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-m",
                           "dslm", "train", *QUIET, *tiny(out), "--train_file", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"dslm: error: {message} {path}"], proc.stderr
    assert not out.exists()


def test_a_corpus_too_small_for_one_block_or_one_validation_example(tmp_path, out):
    tiny_file = write(tmp_path / "tiny.txt", "a tiny corpus.\nanother line.\n")
    refused([*tiny(out), "--train_file", str(tiny_file)], "fewer than one --max_seq_length block of 64: give more "
            "text or a smaller --max_seq_length", before_work=False)
    refused([*tiny(out, "--overwrite_output_dir"), "--train_file", str(CORPUS_FILE(tmp_path)), "--validation_file",
             str(tiny_file)], "the validation data has", before_work=False)
    refused([*tiny(out, "--overwrite_output_dir"), "--train_file", str(CORPUS_FILE(tmp_path)),
             "--per_device_train_batch_size", "100000"], "fewer than one micro batch per rank (100000 x 1 ranks): "
            "give more data or a smaller batch", before_work=False)


# ---------------------------------------------------------------- model

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny BERT saved with save_pretrained: config.json, model.safetensors and a tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    from dslm import tokenizer as tok

    root = tmp_path_factory.mktemp("pretrained")
    trained = tok.train("bert", iter([CORPUS.splitlines()]), 600)
    config = BertConfig(vocab_size=len(trained), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(str(root / "model"))
    trained.save_pretrained(str(root / "model"))
    bigger = tok.load(str(root / "model"))
    bigger.add_tokens([f"newword{i}" for i in range(40)])
    bigger.save_pretrained(str(root / "bigger-tokenizer"))
    return root


def edited(pretrained: Path, tmp_path: Path, **changes) -> Path:
    model = tmp_path / "edited"
    shutil.copytree(pretrained / "model", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))
    return model


def test_model_directories_that_cannot_be_used(pretrained, tmp_path, out):
    model = pretrained / "model"
    common = ["--output_dir", str(out), "--train_file", str(CORPUS_FILE(tmp_path)), "--max_seq_length", "64"]
    refused([*common, "--model_name_or_path", str(tmp_path / "nowhere")], "no such model directory; check the path")
    relative = os.path.relpath(tmp_path / "nowhere")  # DIR/NAME could be a hub id, but DIR exists here
    refused([*common, "--model_name_or_path", relative], f"--model_name_or_path {relative}: no such model directory")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    refused([*common, "--model_name_or_path", str(empty)], "has no config.json: give a model directory saved with "
            "save_pretrained")
    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    shutil.copy(model / "config.json", no_weights)
    refused([*common, "--model_name_or_path", str(no_weights)], "has a config.json but no weights (model.safetensors "
            "or pytorch_model.bin): give a complete model directory")
    refused([*common, "--model_name_or_path", str(edited(pretrained, tmp_path, hidden_size=64))],
            "weight bert.embeddings.LayerNorm.bias has shape [32] but config.json makes it [64]: the config does not "
            "match the weights; restore the model's own config.json")
    shutil.rmtree(tmp_path / "edited")
    refused([*common, "--model_name_or_path", str(edited(pretrained, tmp_path, model_type="bort"))],
            "has model_type 'bort', which this transformers does not know")
    refused([*common, "--model_name_or_path", str(model), "--tokenizer_name", str(pretrained / "bigger-tokenizer")],
            "has 640 tokens but the model's embedding table has 600 rows: pass --resize_token_embeddings to grow it")
    refused([*common[:2], "--model_name_or_path", str(model), "--max_seq_length", "1024"],
            "--max_seq_length 1024 is above the model's position limit 512: use --max_seq_length 512 or less")
    assert not out.exists()


def test_config_that_lacks_weights_is_refused_not_silently_reinitialized(pretrained, tmp_path, out):
    """Three layers in config.json, two in the weights: transformers would start layer 2 from random values."""
    model = edited(pretrained, tmp_path, num_hidden_layers=3)
    refused(["--model_name_or_path", str(model), "--output_dir", str(out), "--max_steps", "1", "--train_file",
             str(CORPUS_FILE(tmp_path))], "the weights lack 16 tensors that config.json describes (e.g. "
            "bert.encoder.layer.2.attention.output.LayerNorm.bias)", before_work=False)


def test_resize_token_embeddings_grows_the_table(pretrained, tmp_path, out):
    result = forked.run(["train", *QUIET, "--model_name_or_path", str(pretrained / "model"), "--tokenizer_name",
                         str(pretrained / "bigger-tokenizer"), "--resize_token_embeddings", "--max_steps", "1",
                         "--max_seq_length", "64", "--train_file", str(CORPUS_FILE(tmp_path)), "--output_dir",
                         str(out), "--deepspeed", "zero0"])
    assert result.code == 0, result.err[-3000:]
    assert json.loads((out / "final" / "config.json").read_text())["vocab_size"] == 640


MODEL_CASES = [
    (["--model_type", "bort"], "unknown --model_type 'bort'"),
    (["--objective", "plm", "--model_type", "bert"], "--objective plm needs a model type such as xlnet (got bert; "
                                                     "bert can do mlm, clm): change --objective or the model"),
    (["--objective", "mlm", "--model_type", "gpt2"], "--objective mlm needs a model type such as bert"),
    (["--model_type", "bert", "--config_overrides", "num_layers=2"], "bert configs have no field 'num_layers'"),
    (["--model_type", "bert", "--config_overrides", "hidden_size=big"], "hidden_size='big' is not a valid int"),
    (["--model_type", "bert", "--config_overrides", "hidden_size"], "'hidden_size' is not key=value"),
    (["--model_type", "bert", "--config_overrides", "hidden_size=-4"], "hidden_size=-4 must not be negative"),
    (["--model_type", "bert", "--config_overrides", "num_attention_heads=0"],
     "cannot build a bert model from this config (ZeroDivisionError"),
    (["--model_type", "bert", "--config_overrides", "hidden_act=nope"], "cannot build a bert model from this config"),
    (["--model_type", "bert", "--config_overrides", "type_vocab_size=0"],
     "--config_overrides makes bert.embeddings.token_type_embeddings.weight empty (shape [0, 768]): a size is 0"),
    (["--model_type", "xlnet", "--config_overrides", "d_model=33,n_head=2"],
     "not a valid xlnet config (Class validation error for validator 'validate_architecture': ValueError"),
    (["--model_type", "bert", "--config_overrides", "hidden_size=1048576,num_attention_heads=1"],
     "B parameters"),
    (["--model_type", "bert", "--config_overrides", "vocab_size=100", "--tokenizer_name", "PRETRAINED"],
     "--config_overrides vocab_size=100 is smaller than the tokenizer's 600 tokens"),
    (["--model_type", "t5", "--objective", "clm"],
     "--objective clm needs a model type such as gpt2, llama, qwen2, mistral (got t5): change --objective"),
]


def test_a_tokenizer_without_a_mask_token_for_mlm(tmp_path, out):
    """MLM replaces tokens with the mask token: a tokenizer without one (GPT-2's) is refused up front."""
    import model_dirs

    bert, gpt2 = model_dirs.make("bert", tmp_path / "bert"), model_dirs.make("gpt2", tmp_path / "gpt2")
    refused(["--output_dir", str(out), "--model_name_or_path", str(bert), "--tokenizer_name", str(gpt2)],
            f"the tokenizer {gpt2} has no mask token, which --objective mlm needs: pass --tokenizer_name DIR with one "
            f"(e.g. the model's own), or train causally with --objective clm")
    assert not out.exists()


@pytest.mark.parametrize("args, message", MODEL_CASES)
def test_bad_model_choices(pretrained, out, args, message):
    args = [str(pretrained / "model") if a == "PRETRAINED" else a for a in args]
    refused(["--output_dir", str(out), *args], message)
    assert not out.exists()


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("flag, value, message", [
    ("per_device_train_batch_size", "0", "--per_device_train_batch_size must be positive, got 0"),
    ("per_device_train_batch_size", "-4", "--per_device_train_batch_size must be positive, got -4"),
    ("per_device_eval_batch_size", "0", "--per_device_eval_batch_size must be positive"),
    ("gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be positive"),
    ("max_steps", "0", "--max_steps must be positive, or -1 to train for --num_train_epochs; got 0"),
    ("max_steps", "-2", "--max_steps must be positive, or -1 to train for --num_train_epochs; got -2"),
    ("max_steps", "2.5", "--max_steps expects int, got 2.5"),
    ("learning_rate", "0", "--learning_rate must be positive, got 0.0"),
    ("learning_rate", "-1e-3", "--learning_rate must be positive"),
    ("learning_rate", "nan", "--learning_rate must be a finite number, got nan"),
    ("learning_rate", "inf", "--learning_rate must be a finite number, got inf"),
    ("learning_rate", "1e300", "--learning_rate must be at most 1e+06, got 1e+300: the optimizer computes in float32"),
    ("mlm_probability", "0", "--mlm_probability must be between 0 and 1 (exclusive), got 0.0"),
    ("mlm_probability", "1", "--mlm_probability must be between 0 and 1 (exclusive), got 1.0"),
    ("plm_probability", "1.5", "--plm_probability must be between 0 and 1 (exclusive)"),
    ("warmup_ratio", "1", "--warmup_ratio must be in [0, 1), got 1.0"),
    ("save_total_limit", "-1", "--save_total_limit must be zero or positive, got -1"),
    ("save_steps", "-1", "--save_steps must be zero or positive"),
    ("logging_steps", "0", "--logging_steps must be positive"),
    ("max_seq_length", "0", "--max_seq_length must be positive"),
    ("vocab_size", str(10**12), "--vocab_size 1000000000000 is out of range: use a value up to 2147483647"),
    ("seed", "-1", "--seed must be between 0 and 4294967295, got -1"),
    ("dist_timeout", "1e300", "--dist_timeout must be at most 1000000 minutes"),
    ("validation_split_percentage", "100", "--validation_split_percentage must be in [0, 100)"),
    ("adam_beta2", "1", "--adam_beta1 and --adam_beta2 must be in [0, 1)"),
    ("eval_steps", "0", "--eval_steps must be positive, got 0"),
    ("weight_decay", "-0.1", "--weight_decay must be zero or positive, got -0.1"),
    ("max_seq_length", "long", "--max_seq_length expects int, got 'long'"),
])
def test_bad_numbers(out, flag, value, message):
    refused([*tiny(out), f"--{flag}", value], message)
    assert not out.exists()


def test_epochs_without_steps_and_sequence_lengths(out):
    refused([*tiny(out), "--max_steps", "-1", "--num_train_epochs", "0"], "nothing to train: give --max_steps > 0 "
            "or --num_train_epochs > 0")
    refused(["--model_type", "gpt2", "--config_overrides", "n_positions=512", "--max_seq_length", "1000",
             "--output_dir", str(out)], "--max_seq_length 1000 is above the model's position limit 512")
    refused(["--model_type", "xlnet", "--max_seq_length", "63", "--output_dir", str(out)],
            "--objective plm needs an even --max_seq_length (got 63)")
    assert not out.exists()


# ---------------------------------------------------------------- DeepSpeed config

DS_CASES = [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes"),
    ({"zero_optimisation": {"stage": 2}}, "unknown key 'zero_optimisation' (did you mean 'zero_optimization'?)"),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}},
     "unknown zero_optimization key 'overlap_com' (did you mean 'overlap_comm'?): fix or remove it"),
    ({"zero_optimization": {"stage": 2, "overlap_comm": "maybe"}},
     "zero_optimization.overlap_comm: Input should be a valid boolean"),
    ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage must be 0, 1, 2 or 3, got 5"),
    ({"zero_optimization": {"stage": "two"}}, "zero_optimization.stage must be 0, 1, 2 or 3, got 'two'"),
    ({"fp16": {"enabled": "auto", "loss_scal": 0}}, "unknown fp16 key 'loss_scal' (did you mean 'loss_scale'?)"),
    ({"bf16": {"enabled": "yes please"}}, "bf16.enabled: Input should be a valid boolean"),
    ({"optimizer": {"type": "AdamW", "parms": {}}}, "unknown optimizer key 'parms'; optimizer takes legacy_fusion, "
                                                     "params, type"),
    ({"optimizer": {"type": "AdamQ"}}, "unknown optimizer type 'AdamQ': use AdamW"),
    ({"optimizer": {"type": "AdamW", "params": {"betas2": 0.9}}}, "AdamW takes no parameter 'betas2'"),
    ({"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1.0}}},
     "takes no parameter 'max_grad_norm' (optimizer.params); use gradient_clipping (or --max_grad_norm)"),
    ({"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}}, "optimizer.params.betas must be two numbers"),
    ({"optimizer": {"type": "AdamW", "params": {"eps": "tiny"}}},
     "optimizer.params.eps must be a number from 0 to 1e+06, got 'tiny'"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}},
     "sets optimizer.params.lr=0.0003 but --learning_rate is 0.002: change one, or set it to \"auto\""),
    ({"scheduler": {"type": "WarmupLR", "params": {"warmup_steps": 10}}},
     "WarmupLR takes no parameter 'warmup_steps' (scheduler.params): use last_batch_iteration"),
    ({"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": "low", "cycle_max_lr": 1}}},
     "scheduler.params are not valid for OneCycle"),
    ({"scheduler": {"type": "Cosine"}}, "unknown scheduler type 'Cosine'"),
    ({"gradient_clipping": "big"}, "gradient_clipping must be a number >= 0, got 'big'"),
    ({"steps_per_print": "often"}, "steps_per_print must be a positive integer, got 'often'"),
    ({"wall_clock_breakdown": "yes"}, "wall_clock_breakdown must be true or false, got 'yes'"),
    ({"fp16": {"enabled": True}}, "fp16 needs a GPU and this machine has none: use --bf16, or drop fp16"),
    ({"train_batch_size": 16}, "sets train_batch_size=16, but micro batch 4 x accumulation 1 x world size 1 = 4: "
                               "pass --gradient_accumulation_steps 4, or set it to \"auto\""),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
     "optimizer offload needs an optimizer section (e.g. {\"type\": \"AdamW\"})"),
    ({"optimizer": {"type": "SGD", "params": {"lr": "auto"}},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
     "optimizer offload runs DeepSpeed's CPU Adam or Lion only (got SGD)"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
     "zero_optimization.offload_param needs stage 3 (got stage 2)"),
    ({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
     "zero_optimization.offload_optimizer needs stage 1, 2 or 3"),
    ({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}},
     "offloads to nvme but has no nvme_path: set it to a directory on the NVMe drive"),
    ({"zero_optimization": [1]}, "zero_optimization must be a JSON object, got [1]"),
    ({"optimizer": {"type": "Lamb"}}, "optimizer type Lamb runs DeepSpeed's FusedLamb op, and the cpu accelerator has "
                                      "no such op: use AdamW"),
]


@pytest.mark.parametrize("content, message", DS_CASES, ids=[m[:40] for _, m in DS_CASES])
def test_bad_deepspeed_configs(tmp_path, out, content, message):
    path = write(tmp_path / "ds.json", content if isinstance(content, str) else json.dumps(content))
    refused([*tiny(out), "--deepspeed", str(path)], message)
    assert not out.exists()


def test_nvme_offload_needs_the_async_io_op(tmp_path, out):
    from dslm import ds_ops

    ds = {"optimizer": {"type": "AdamW"},
          "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": str(tmp_path)}}}
    path = write(tmp_path / "ds.json", json.dumps(ds))
    if ds_ops.op_problem("AsyncIOBuilder") is None:
        pytest.skip("DeepSpeed's async_io op is available here (libaio installed)")
    refused([*tiny(out), "--deepspeed", str(path)], "nvme offload needs DeepSpeed's async_io op (it cannot be built on "
            "this machine): install libaio (apt install libaio-dev)")


def test_cpu_offload_without_a_built_op_or_a_compiler_is_refused_up_front(tmp_path, out, monkeypatch):
    """CPU Adam for offload: prebuilt, JIT-built already, or buildable (a C++ compiler and ninja on PATH)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    refused([*tiny(out), "--deepspeed", "zero2_offload"], "optimizer offload needs DeepSpeed's cpu_adam op, which is "
            "not built and c++ and ninja are not on PATH to build it: install g++ and ninja (pip install ninja), "
            "or prebuild it (DS_BUILD_CPU_ADAM=1 pip install deepspeed)", env=env)
    (tmp_path / "extensions" / "cpu_adam").mkdir(parents=True)
    (tmp_path / "extensions" / "cpu_adam" / "cpu_adam.so").write_bytes(b"")  # built before: no compiler needed
    from dslm import ds_ops

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setenv("PATH", str(empty_bin))
    assert ds_ops.op_problem("CPUAdamBuilder") is None


# ---------------------------------------------------------------- launch

def test_a_world_size_that_cannot_make_the_global_batch(tmp_path, out):
    """The launcher's world size is known before the process group starts: checked first."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    path = write(tmp_path / "ds.json", json.dumps({"train_batch_size": 12}))
    refused([*tiny(out), "--deepspeed", str(path)], "sets train_batch_size=12, but micro batch 4 x accumulation 1 x "
            "world size 2 = 8: 2 ranks with micro batches of 4 cannot make 12; set it to \"auto\", or change "
            "--per_device_train_batch_size or the number of ranks", env=env)
    write(path, json.dumps({"train_batch_size": 16}))
    refused([*tiny(out), "--deepspeed", str(path)], "world size 2 = 8: pass --gradient_accumulation_steps 2, or set "
            "it to \"auto\"", env=env)
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("node1 slots=2\nnode1 slots=2\n", "line 2: node1 is already on line 1: list each host once with all its slots"),
    ("node1 slots=0\n", "line 1: node1 has slots=0: give it at least one slot or remove it"),
    ("node1 slots=2\nnode2 slot=2\n", "line 2: 'node2 slot=2' is not `HOST slots=N`: see hostfiles/README.md"),
    ("node1 slots=two\n", "is not `HOST slots=N`"),
    ("# only a comment\n", "lists no hosts: add lines `HOST slots=N`"),
])
def test_bad_hostfiles_through_the_cli(tmp_path, capsys, text, message):
    path = write(tmp_path / "hostfile", text)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["hostfile", "check", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith(f"dslm: error: {path} ") and message in line, err


# ---------------------------------------------------------------- output

def test_an_output_dir_holding_another_run(tmp_path, out):
    out.mkdir()
    write(out / "results.json", "{}")
    refused(tiny(out), "already holds a run (results.json): pass --overwrite_output_dir to start over, or choose "
            "another --output_dir")
    stale = out / "checkpoints" / "step-00000100"
    stale.mkdir(parents=True)
    write(stale / "dslm_state.json", json.dumps({"run_fingerprint": "another-run", "step": 100}))
    write(stale / "dslm_commit.json", "{}")
    refused(tiny(out), "holds checkpoints of another run (step-00000100: different model, data or seed): use another "
            "--output_dir, or --overwrite_output_dir to replace them", before_work=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "results.json"]
    assert (out / "results.json").read_text() == "{}" and (stale / "dslm_state.json").exists()
    write(tmp_path / "a-file", "x")
    refused(tiny(tmp_path / "a-file"), "--output_dir " + str(tmp_path / "a-file") + " is a file: choose a directory")


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs directory; unmounted afterwards. Needs root (CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)])


def test_an_output_dir_on_a_read_only_or_full_file_system(mount):
    read_only = mount("ro,size=1m")
    refused(tiny(read_only / "out"), f"--output_dir {read_only / 'out'} is on a read-only file system: choose "
            "another --output_dir")
    full = mount("size=256k")
    subprocess.run(["dd", "if=/dev/zero", f"of={full / 'filler'}", "bs=4k"], capture_output=True)
    refused(tiny(full / "out"), f"--output_dir {full / 'out'} is on a full file system: choose another --output_dir")
    assert not (full / "out").exists()
    small = mount("size=512k")
    refused(tiny(small / "out"), "MiB free on its file system (dslm needs at least 1 MiB): free some space or choose "
            "another --output_dir")


def test_a_wandb_mode_that_wandb_does_not_know(out):
    """wandb itself would fail on it with a traceback once the data is prepared."""
    env = {**os.environ, "WANDB_MODE": "offlne"}
    result = forked.run(["train", *tiny(out)], env=env)  # W&B on (the other cases here run with --report_to none)
    line = "dslm: error: WANDB_MODE='offlne' is not a W&B mode: set online, offline or disabled, or unset it"
    assert result.code == 2 and error_line(result) == line, result.err[-2000:]
    assert not out.exists()


# ---------------------------------------------------------------- trust

def test_trust_remote_code_is_off_by_default_and_warns_when_on(out):
    missing = ["--deepspeed", "missing.json"]  # stop right after the model checks
    result = forked.run(["train", *QUIET, *tiny(out), *missing])
    assert "trust_remote_code" not in result.err
    result = forked.run(["train", *QUIET, *tiny(out), *missing, "--trust_remote_code"])
    lines = result.err.strip().splitlines()
    assert lines[0] == ("warning: --trust_remote_code runs Python code shipped with the model and tokenizer "
                        "directories: use it only with models whose code you trust"), result.err
    assert lines[1].startswith("dslm: error: --deepspeed missing.json")
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    assert "trust_remote_code" not in forked.run(["train", *QUIET, *tiny(out), *missing, "--trust_remote_code"],
                                                 env=env).err  # rank 0 says it, once per job


# ---------------------------------------------------------------- umask

def modes_under(*roots: Path) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.lstat().st_mode) for root in roots for p in [root, *root.rglob("*")]
            if not p.is_symlink()}


@pytest.mark.parametrize("umask, forbidden", [(0o022, 0o002), (0o077, 0o077)], ids=["022", "077"])
def test_outputs_follow_the_umask(tmp_path, umask, forbidden):
    """Everything a run writes (dslm, DeepSpeed, datasets, W&B offline, the tokenizer cache) gets the user's
    umask: nothing world-writable with 022, nothing readable by group or others with 077."""
    out, cache = tmp_path / "out", tmp_path / "xdg"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "WANDB_MODE": "offline"}
    result = forked.run(["train", *tiny(out, "--report_to", "wandb", "--save_steps", "1"), "--train_file",
                         str(CORPUS_FILE(tmp_path))], env=env, umask=umask)
    assert result.code == 0, result.err[-3000:]
    assert (out / "wandb").is_dir() and (out / "final").is_dir() and (out / "cache").is_dir()
    modes = modes_under(out, cache / "dslm")
    assert len(modes) > 20
    bad = {path: oct(mode) for path, mode in modes.items() if mode & forbidden}
    assert not bad, bad


# ---------------------------------------------------------------- property: random flags, configs and corpora

BAD_INTS = ["0", "-1", "-7", str(2**31), str(10**20), "nan", "inf", "2.5", "abc", "1e3", "", "[1,2]"]
BAD_FLOATS = ["nan", "inf", "-inf", "0", "-1", "1", "1.5", "1e300", "-1e-9", "x", ""]


def ints(low: int, high: int) -> st.SearchStrategy[str]:
    """Two draws in three valid: most examples get past the first check and exercise the later ones."""
    valid = st.integers(low, high).map(str)
    return st.one_of(valid, valid, st.sampled_from(BAD_INTS))


def floats(low: float, high: float) -> st.SearchStrategy[str]:
    valid = st.floats(low, high).map(repr)
    return st.one_of(valid, valid, st.sampled_from(BAD_FLOATS))


# Valid values stay small, so a run that is accepted trains a tiny model for one step in seconds:
# no valid large step counts, accumulation or epochs.
FLAG_VALUES = {
    "per_device_train_batch_size": ints(1, 8), "per_device_eval_batch_size": ints(1, 64),
    "gradient_accumulation_steps": ints(1, 2), "max_seq_length": st.one_of(ints(1, 130), st.just(str(2**31 - 1))),
    "max_steps": st.sampled_from(["1", "0", "-2", "-1000", "nan", "1.5", "x", str(10**20)]),
    "learning_rate": floats(1e-6, 1.0), "mlm_probability": floats(0, 1), "plm_probability": floats(0, 1),
    "max_span_length": ints(1, 8), "warmup_ratio": floats(0, 1), "warmup_steps": ints(0, 5),
    "weight_decay": floats(0, 1), "adam_beta1": floats(0, 1), "adam_beta2": floats(0, 1),
    "adam_epsilon": floats(0, 1e-3), "max_grad_norm": floats(0, 10), "vocab_size": ints(1, 800),
    "save_total_limit": ints(1, 3), "logging_steps": ints(1, 3), "eval_steps": ints(1, 3), "save_steps": ints(0, 3),
    "seed": st.one_of(ints(0, 2**32), st.just(str(2**32))), "validation_split_percentage": floats(0, 99),
    "max_train_samples": ints(1, 100), "max_eval_samples": ints(1, 40), "dist_timeout": floats(0.1, 60),
    "line_by_line": st.sampled_from(["true", "false", "maybe", "1"]),
    "whole_word_mask": st.sampled_from(["true", "no"]),
    "lr_scheduler_type": st.sampled_from(["linear", "cosine", "constant", "zigzag"]),
    "text_column": st.sampled_from(["text", "body", "missing"]), "num_train_epochs": floats(0, 2),
}
FAMILIES = ["bert", "bert", "roberta", "distilbert", "gpt2", "xlnet", "bort"]
OBJECTIVES = [None, None, None, None, "mlm", "clm", "plm", "nlm"]
BAD_OVERRIDES = ["", "", "", "", "", ",hidden_size=-1", ",num_layers=2", ",vocab_size=5", ",n_embd=31",
                 ",hidden_act=relu", ",max_position_embeddings=8", ",layer_norm_eps=x", ",type_vocab_size=0",
                 ",n_head=0"]


def ds_value() -> st.SearchStrategy:
    return st.one_of(st.just("auto"), st.integers(-2, 40), st.booleans(), st.none(), st.text(max_size=4),
                     st.floats(allow_nan=False, allow_infinity=False), st.lists(st.floats(-1, 2), max_size=3))


def section(**optional: st.SearchStrategy) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional=optional)


# Snippets of a DeepSpeed JSON: known sections with random values, and unknown keys. CPU offload with a
# valid optimizer is left out: it is accepted and JIT-compiles DeepSpeed's CPU Adam for a minute.
DS_SECTIONS = section(
    zero_optimization=section(stage=st.one_of(st.integers(-1, 4), ds_value()), overlap_comm=ds_value(),
                              reduce_bucket_size=ds_value(), bogus=ds_value(),
                              offload_param=section(device=st.sampled_from(["none", "nvme", "disk", "cpu"])),
                              offload_optimizer=section(device=st.sampled_from(["none", "nvme", "gpu"]))),
    optimizer=st.fixed_dictionaries({"type": st.sampled_from(["AdamW", "Adam", "SGD", "Lamb", "Lion", "Adagrad",
                                                              "RMSprop", "Nope"])},
                                    optional={"params": section(lr=ds_value(), betas=ds_value(), eps=ds_value(),
                                                                weight_decay=ds_value(), momentum=ds_value(),
                                                                max_grad_norm=ds_value())}),
    scheduler=st.fixed_dictionaries({"type": st.sampled_from(["WarmupLR", "WarmupDecayLR", "WarmupCosineLR",
                                                              "OneCycle", "LRRangeTest", "Cosine"])},
                                    optional={"params": section(warmup_num_steps=ds_value(), warmup_max_lr=ds_value(),
                                                                total_num_steps=ds_value(), cycle_min_lr=ds_value(),
                                                                cycle_max_lr=ds_value(),
                                                                warmup_type=st.sampled_from(["log", "linear", "z"]))}),
    bf16=section(enabled=ds_value()), fp16=section(enabled=ds_value(), loss_scale=ds_value()),
    train_batch_size=ds_value(), train_micro_batch_size_per_gpu=ds_value(), gradient_accumulation_steps=ds_value(),
    gradient_clipping=ds_value(), steps_per_print=ds_value(),
    wall_clock_breakdown=ds_value(), prescale_gradients=ds_value(),
)
DS_SNIPPETS = st.one_of(st.none(), st.sampled_from(["zero0", "zero1", "zero3"]), DS_SECTIONS)

WORDS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
CORPORA = st.one_of(
    st.tuples(st.sampled_from([".txt", ".json", ".jsonl", ".csv", ".parquet"]), st.binary(max_size=3000)),
    st.tuples(st.just(".txt"), st.lists(WORDS, max_size=400).map(lambda ws: " ".join(ws).encode())),
    st.tuples(st.sampled_from([".json", ".jsonl"]), st.lists(st.fixed_dictionaries(
        {}, optional={"text": WORDS, "body": WORDS, "n": st.integers()}), max_size=200).map(
        lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())),
    st.tuples(st.just(".csv"), st.lists(WORDS, max_size=200).map(
        lambda ws: ("text,n\n" + "".join(f'"{w.replace(chr(34), "")} {CORPUS[:200]}",1\n' for w in ws)).encode())),
    st.tuples(st.just(".txt"), st.integers(0, 20).map(lambda n: (CORPUS[: n * 500]).encode())),
    st.tuples(st.just(".parquet"), st.lists(WORDS.map(lambda w: w + " " + CORPUS[:300]), max_size=50)),
)


def kind(line: str) -> str:
    """An error line without its paths and values, to count errors by kind in hypothesis' statistics."""
    words = [w for w in line.removeprefix("dslm: error: ").split() if "/" not in w and not w[:1].isdigit()]
    return " ".join(words[:5])


def write_corpus(directory: Path, suffix: str, content: bytes | list[str]) -> Path:
    """Bytes as they are; a list of strings as a parquet table with one text column."""
    path = directory / f"corpus{suffix}"
    if isinstance(content, list):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": content}), path)
    else:
        path.write_bytes(content)
    return path


# 40 fixed examples keep the file within about a minute; DSLM_FUZZ_EXAMPLES=N explores N random ones.
FUZZ = int(os.environ.get("DSLM_FUZZ_EXAMPLES", "0"))


@settings(max_examples=FUZZ or 40, deadline=None, derandomize=not FUZZ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(family=st.sampled_from(FAMILIES), objective=st.sampled_from(OBJECTIVES),
       override=st.sampled_from(BAD_OVERRIDES), flags=st.lists(st.sampled_from(sorted(FLAG_VALUES)).flatmap(
           lambda name: st.tuples(st.just(name), FLAG_VALUES[name])), max_size=3, unique_by=lambda kv: kv[0]),
       ds=st.one_of(st.none(), DS_SNIPPETS), corpus=st.one_of(st.none(), st.none(), CORPORA, CORPORA))
def test_random_input_fails_cleanly_or_trains(tmp_path_factory, family, objective, override, flags, ds, corpus):
    """Whatever the flags, DeepSpeed JSON and corpus bytes: a normal run, or one clean error line."""
    work = tmp_path_factory.mktemp("random")
    args = ["train", *QUIET, "--output_dir", str(work / "out"), "--max_steps", "1", "--max_eval_samples", "16",
            "--max_seq_length", "32", "--vocab_size", "300", "--model_type", family,
            "--config_overrides", TINY.get(family, "hidden_size=32") + override]
    if objective:
        args += ["--objective", objective]
    if isinstance(ds, dict):
        args += ["--deepspeed", str(write(work / "ds.json", json.dumps(ds)))]
    elif ds:
        args += ["--deepspeed", ds]
    if corpus:
        args += ["--train_file", str(write_corpus(work, *corpus))]
    args += [f"--{name}={value}" for name, value in flags]
    result = forked.run(args, timeout=240)
    assert "Traceback" not in result.err, (args, result.err[-4000:])
    if result.code == 0:
        assert "done: " in result.out, (args, result.out[-2000:])
        event("trained")
        return
    assert result.code > 0, (args, result.code, result.err[-3000:])  # 2 bad input, 3 non-finite loss, 1 other
    event(f"exit {result.code}: {kind(error_line(result))}")


@settings(max_examples=FUZZ or 15, deadline=None, derandomize=not FUZZ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(ds=DS_SECTIONS)
def test_random_deepspeed_json_fails_cleanly_or_trains(tmp_path_factory, ds):
    """The DeepSpeed JSON alone, with flags that are all valid: what dslm accepts, DeepSpeed must run."""
    work = tmp_path_factory.mktemp("random-ds")
    args = ["train", *QUIET, *tiny(work / "out"), "--max_eval_samples", "16", "--deepspeed",
            str(write(work / "ds.json", json.dumps(ds)))]
    result = forked.run(args, timeout=240)
    assert "Traceback" not in result.err, (ds, result.err[-4000:])
    if result.code == 0:
        assert "done: " in result.out, (ds, result.out[-2000:])
        event("trained")
        return
    assert result.code > 0, (ds, result.code, result.err[-3000:])
    event(kind(error_line(result)))
