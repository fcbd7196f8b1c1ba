"""Tests for tinygrad_char.data: loading WikiText-2 and text files, splits, batches.

The real files live in ../shared/data beside the repository (never copied into it):
WikiText-2 validation and test (no train file) and tinyshakespeare. A test that needs one
is skipped, with the path in the reason, only when that file is absent. Small synthetic
corpora are written to pytest's tmp_path where a test needs a train split.
"""

import hashlib
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_char.data import (DataError, count_eval_targets, eval_batches, get_batch,
                                load_text, load_wikitext2, prepare_text, prepare_wikitext2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WIKI_DIR = SHARED_DATA / "wikitext-2-raw"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
# sha256 of the official files, from shared/data/SOURCES.md
WIKI_SHA256 = {
    "validation": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}

needs_wiki = pytest.mark.skipif(
    not (WIKI_DIR / "wiki.valid.raw").is_file() or not (WIKI_DIR / "wiki.test.raw").is_file(),
    reason=f"WikiText-2 files absent from {WIKI_DIR} (shared/ not beside the repo)")
needs_shakespeare = pytest.mark.skipif(
    not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent (shared/ not beside the repo)")


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
    with pytest.raises(DataError, match="available splits: validation, test"):
        prepare_wikitext2(WIKI_DIR, verbose=False)
    with pytest.raises(DataError, match="not a WikiText-2 split"):
        prepare_wikitext2(WIKI_DIR, train_split="valid", verbose=False)


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
    from tinygrad_char.data import batch_starts, windows

    ids = np.arange(100) * 3
    starts = batch_starts(len(ids), 5, 8, np.random.default_rng(4))
    x, y = windows(ids, starts, 8)
    assert np.array_equal(x, get_batch(ids, 5, 8, np.random.default_rng(4))[0])
    assert np.array_equal(x[:, 0], ids[starts]) and np.array_equal(y, x + 3)
    assert starts.max() <= 100 - 8 - 1
