"""Tests for tinygrad_char.training.tokenizer: ids, round trips, unknown characters, serialisation.

Includes a timing check on a megabyte: the packaged sample text with non-ASCII characters
mixed in (as WikiText-2 has).
"""

import json
import time

import numpy as np
import pytest

from conftest import sample_text
from tinygrad_char.training.tokenizer import UNK_CHAR, CharTokenizer


def test_from_text_sorts_distinct_characters():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == "\n dehlorw"
    assert tok.unk_id == len(tok.chars) == 9
    assert tok.vocab_size == 10
    assert list(tok.encode("\n d")) == [0, 1, 2]


def test_ids_follow_given_order():
    tok = CharTokenizer(["z", "a", "é"], unk=False)
    assert tok.unk_id is None
    assert tok.vocab_size == 3
    ids = tok.encode("aéz")
    assert ids.dtype == np.int64
    assert list(ids) == [1, 2, 0]


def test_round_trip_including_non_ascii():
    text = "Ünïcödé — 日本語 😀 tabs\tand\r\nnewlines\n"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.decode(list(ids)) == text
    assert tok.encode("").shape == (0,)
    assert tok.decode([]) == ""


def test_unknown_characters_map_to_unk_and_are_counted():
    tok = CharTokenizer.from_text("abc")
    ids = tok.encode("axbyyc😀")
    assert list(ids) == [0, 3, 1, 3, 3, 2, 3]
    assert tok.count_unknown("axbyyc😀") == 4
    assert tok.count_unknown("abc") == 0
    assert tok.decode(ids) == f"a{UNK_CHAR}b{UNK_CHAR}{UNK_CHAR}c{UNK_CHAR}"


def test_raise_names_unknown_characters_once_on_one_line():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as info:
        tok.encode("aé—\né—x", errors="raise", what="prompt")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("prompt contains characters not in the model's vocabulary")
    assert "'é', '—', '\\n', 'x'" in message
    assert message.count("'é'") == 1


def test_raise_lists_at_most_ten_characters():
    tok = CharTokenizer.from_text("a")
    with pytest.raises(ValueError, match="and 16 more"):
        tok.encode("bcdefghijklmnopqrstuvwxyz!", errors="raise")


def test_without_unk_unknown_characters_raise_even_with_errors_unk():
    tok = CharTokenizer.from_text("abc", unk=False)
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("az")
    assert tok.count_unknown("az") == 1


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="one character"):
        CharTokenizer(["ab", "c"])
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="errors"):
        tok.encode("a", errors="ignore")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])


def test_to_dict_from_dict_round_trip_through_json():
    tok = CharTokenizer.from_text("the quick brown fox\n—é", unk=True)
    d = json.loads(json.dumps(tok.to_dict()))
    assert d == {"chars": tok.chars, "unk": True}
    again = CharTokenizer.from_dict(d)
    assert again == tok
    assert hash(again) == hash(tok)
    assert CharTokenizer.from_dict({"chars": tok.chars, "unk": False}) != tok
    assert "vocab_size=" in repr(tok)


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "expected a dict"),
    ({"chars": "ab"}, "missing 'unk'"),
    ({"chars": ["a", "b"], "unk": True}, "'chars' must be a string"),
    ({"chars": "ab", "unk": "yes"}, "unk must be true or false"),
    ({"chars": "aa", "unk": True}, "distinct"),
])
def test_from_dict_rejects_malformed_input(bad, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer.from_dict(bad)


def test_encode_and_decode_a_megabyte_quickly():
    text = sample_text() + "caf\u00e9 \u2014 \u00fcber 20 \u20ac \u65e5\u672c\n" * 2000
    tok = CharTokenizer.from_text(text)
    start = time.perf_counter()
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    elapsed = time.perf_counter() - start
    assert decoded == text
    assert elapsed < 0.5, f"encode + decode of {len(text)} characters took {elapsed:.2f} s"
