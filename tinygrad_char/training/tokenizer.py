"""The character tokenizer: one id per character, plus an optional reserved unknown id.

Ids 0..len(chars)-1 are the vocabulary's characters in the order given; `from_text`
sorts the distinct characters of the training text, so the same text always gives the
same ids. With unk=True, id len(chars) stands for every character outside the vocabulary
(it decodes to U+FFFD). The vocabulary travels inside checkpoints as `to_dict()`.

Encoding is vectorised: the text becomes an array of Unicode code points, and a lookup
table indexed by code point gives the ids, so a megabyte encodes in milliseconds.

This is deliberately *not* a subword tokenizer: no merges, no normalisation, no special
tokens beyond <unk>.
"""

import numpy as np

UNK_CHAR = "\ufffd"  # what the unknown id decodes to (the Unicode replacement character)
_NOT_IN_VOCAB = -1  # marks a code point outside the vocabulary in the lookup table
_MAX_NAMED = 10  # how many distinct unknown characters an error message lists


def _code_points(text):
    """The Unicode code points of `text` as a uint32 array (n,), without a Python loop."""
    # surrogatepass: a lone surrogate (possible in a Python str) stays one code point
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    """Maps characters to int64 ids and back.

    Attributes:
        chars: the vocabulary as one string; chars[i] has id i.
        unk: whether unknown characters map to a reserved id.
        unk_id: len(chars) when unk, else None.
        vocab_size: V = len(chars) (+1 with unk): the model's embedding rows.
    """

    def __init__(self, chars, unk=True):
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"tokenizer: every vocabulary entry must be one character, "
                                 f"got {c!r}")
        chars = "".join(chars)
        if len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"tokenizer: vocabulary characters must be distinct; repeated: "
                             f"{', '.join(map(repr, repeated))}")
        if not isinstance(unk, bool):
            raise ValueError(f"tokenizer: unk must be true or false, got {unk!r}")
        self.chars = chars
        self.unk = unk
        self.unk_id = len(chars) if unk else None
        codes = _code_points(chars)  # (len(chars),)
        # _id_of_code[c] is the id of code point c; one extra last entry catches every code
        # point above the vocabulary's largest (encode clips to it)
        table_size = int(codes.max()) + 2 if len(codes) else 1
        self._id_of_code = np.full(table_size, _NOT_IN_VOCAB, dtype=np.int64)
        self._id_of_code[codes] = np.arange(len(chars))
        # _code_of_id[i] is the code point id i decodes to; the unk id decodes to U+FFFD
        self._code_of_id = np.concatenate([codes, _code_points(UNK_CHAR if unk else "")])

    @classmethod
    def from_text(cls, text, unk=True):
        """A tokenizer whose vocabulary is the sorted distinct characters of `text`.

        Pass the training text only, so evaluation text cannot leak into the vocabulary.
        """
        return cls(sorted(set(text)), unk=unk)

    @property
    def vocab_size(self):
        return len(self.chars) + (1 if self.unk else 0)

    def _lookup(self, text):
        """ids (n,) int64 with _NOT_IN_VOCAB where a character is outside the vocabulary."""
        codes = _code_points(text)  # (n,)
        last = len(self._id_of_code) - 1
        return self._id_of_code[np.minimum(codes, last)]

    def _unknown_message(self, text, ids, what):
        unknown = dict.fromkeys(text[i] for i in np.flatnonzero(ids == _NOT_IN_VOCAB))
        named = ", ".join(repr(c) for c in list(unknown)[:_MAX_NAMED])
        more = f" and {len(unknown) - _MAX_NAMED} more" if len(unknown) > _MAX_NAMED else ""
        return (f"{what} contains characters not in the model's vocabulary: {named}{more}; "
                f"remove or replace them")

    def encode(self, text, errors="unk", what="text"):
        """Return the ids of `text` as an int64 array (n,).

        errors="unk": characters outside the vocabulary become unk_id (an error when the
        tokenizer has no unknown id). errors="raise": a one-line ValueError naming them.
        `what` names the text in that message, e.g. "prompt".
        """
        if errors not in ("unk", "raise"):
            raise ValueError(f"tokenizer: errors must be 'unk' or 'raise', got {errors!r}")
        if not isinstance(text, str):
            raise TypeError(f"tokenizer: encode takes a str, got {type(text).__name__}")
        ids = self._lookup(text)  # (n,)
        is_unknown = ids == _NOT_IN_VOCAB  # (n,)
        if not is_unknown.any():
            return ids
        if errors == "raise" or not self.unk:
            raise ValueError(self._unknown_message(text, ids, what))
        ids[is_unknown] = self.unk_id
        return ids

    def count_unknown(self, text):
        """How many characters of `text` are outside the vocabulary."""
        return int(np.count_nonzero(self._lookup(text) == _NOT_IN_VOCAB))

    def decode(self, ids):
        """Return the text of `ids` (any int sequence or NumPy array); unk_id gives U+FFFD."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)  # (n,)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise ValueError(f"tokenizer: id {bad} is outside the vocabulary "
                             f"(0..{self.vocab_size - 1})")
        return self._code_of_id[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def to_dict(self):
        """The vocabulary as JSON-serialisable data: {"chars": str, "unk": bool}."""
        return {"chars": self.chars, "unk": self.unk}

    @classmethod
    def from_dict(cls, d):
        """Rebuild a tokenizer from `to_dict()`'s output; a clear ValueError if malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"tokenizer: expected a dict with 'chars' and 'unk', "
                             f"got {type(d).__name__}")
        missing = [key for key in ("chars", "unk") if key not in d]
        if missing:
            raise ValueError(f"tokenizer: dict is missing {', '.join(map(repr, missing))} "
                             f"(has {', '.join(map(repr, d)) or 'no keys'})")
        if not isinstance(d["chars"], str):
            raise ValueError(f"tokenizer: 'chars' must be a string, "
                             f"got {type(d['chars']).__name__}")
        return cls(d["chars"], unk=d["unk"])

    def __eq__(self, other):
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self.chars == other.chars and self.unk == other.unk

    def __hash__(self):
        return hash((self.chars, self.unk))

    def __repr__(self):
        shown = self.chars if len(self.chars) <= 30 else self.chars[:30] + "..."
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk}, chars={shown!r})"
