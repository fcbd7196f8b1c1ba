"""Text in, id arrays and batches out: WikiText-2 (raw, character level), any text file,
or the small sample text shipped in the package.

Loading: `load_wikitext2` reads wiki.{train,valid,test}.raw from a folder (the `data_dir`
argument, else $TINYGRAD_CHAR_DATA_DIR), else downloads wikitext-2-raw-v1 with Hugging
Face `datasets`; `load_text` reads one file; `load_sample_text` the packaged sample
(seven Shakespeare tragedies, public domain: sample_data/SOURCE.md). All return the text
exactly as stored.
Preparing: `prepare_wikitext2`, `prepare_text` and `prepare_sample_text` build the
tokenizer from the training text only and encode each split into int64 ids (`CharData`).
When no data folder is given and the hub cannot give WikiText-2, `prepare_wikitext2`
falls back to the sample text (unless told not to), prints one line saying so, and names
it in `CharData.description`, so no figure measured on it passes for WikiText-2's.
Batching: `get_batch` draws random training windows; `eval_batches` walks a whole split
once, so every (input, next character) pair is scored exactly once.

This is deliberately *not* a data pipeline: no shuffling buffers, no workers, no caching
of encoded ids. The arrays are NumPy, on the host; the training loop copies batches to
the device.
"""

import gzip
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from tinygrad_char.backend import get_array_module

from tinygrad_char.ops.cross_entropy import IGNORE_INDEX
from tinygrad_char.training.tokenizer import CharTokenizer

DATA_DIR_ENV = "TINYGRAD_CHAR_DATA_DIR"
WIKITEXT2_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw",
                   "test": "wiki.test.raw"}
HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0  # the hub probe gives up after this; `datasets` itself retries ~25 s
HELD_OUT_FRACTION = 0.1  # the tail of a split held out for validation when it also trains
SAMPLE_FILE = "shakespeare_tragedies.txt.gz"  # in sample_data/; source and licence: SOURCE.md
SAMPLE_NAME = "the packaged sample text, seven Shakespeare tragedies"


class DataError(ValueError):
    """Data cannot be loaded or batched; the message says what is wrong and how to fix it."""


class HubUnavailable(DataError):
    """WikiText-2 cannot come from the hub; `reason` says why in a few words."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


def _data_fix():
    return (f"connect to the internet so `datasets` can download wikitext-2-raw-v1, or pass "
            f"--data-dir DIR (or set {DATA_DIR_ENV}) to a folder holding "
            f"wiki.{{train,valid,test}}.raw")


def _read_utf8(path):
    """The file's text exactly: UTF-8, no newline translation."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check_max_lines(max_lines):
    if max_lines is not None and (isinstance(max_lines, bool) or
                                  not isinstance(max_lines, int) or max_lines < 1):
        raise DataError(f"max_lines must be a positive integer, got {max_lines!r}")


def _first_lines(text, max_lines):
    """The first `max_lines` lines of `text` (split on "\\n" only), each with its "\\n"."""
    end = -1
    for _ in range(max_lines):
        end = text.find("\n", end + 1)
        if end == -1:
            return text
    return text[:end + 1]


def _load_wikitext2_from_dir(data_dir, verbose):
    data_dir = Path(data_dir)
    expected = ", ".join(WIKITEXT2_FILES.values())
    if not data_dir.is_dir():
        raise DataError(f"WikiText-2 folder {data_dir} does not exist (it should hold "
                        f"{expected})")
    splits = {}
    for split, name in WIKITEXT2_FILES.items():
        if (data_dir / name).is_file():
            splits[split] = _read_utf8(data_dir / name)
    if not splits:
        raise DataError(f"no WikiText-2 files in {data_dir}: expected {expected}")
    missing = [f"{split} ({WIKITEXT2_FILES[split]})" for split in WIKITEXT2_FILES
               if split not in splits]
    if missing and verbose:
        print(f"WikiText-2 in {data_dir}: missing {', '.join(missing)}; "
              f"loaded {', '.join(splits)}")
    return splits


def _hub_reachable():
    """True when a TCP connection to the hub (or the HTTPS proxy) opens within the timeout.

    Without this probe, `datasets` spends ~25 s retrying before it reports being offline.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    endpoint = urlparse(proxy or os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    host, port = endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)
    if host is None:  # a setting this probe cannot parse: let `datasets` try it
        return True
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _load_wikitext2_from_hub():
    # HF_HUB_OFFLINE=1 means "use the local datasets cache": no probe, datasets fails fast
    offline = any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
                  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not _hub_reachable():
        raise HubUnavailable(f"cannot load WikiText-2: no local data folder given and "
                             f"{HUB_HOST} is unreachable; {_data_fix()}",
                             reason=f"{HUB_HOST} is unreachable")
    try:
        import datasets

        hub = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
        # the hub's rows are the raw file's lines, each with its "\n"
        return {split: "".join(hub[split]["text"]) for split in WIKITEXT2_FILES if split in hub}
    except Exception as e:  # network, cache and parsing errors all end the same way
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubUnavailable(f"cannot load WikiText-2 from the Hugging Face hub ({reason}); "
                             f"{_data_fix()}", reason=reason) from None


def load_wikitext2(data_dir=None, max_lines=None, verbose=True):
    """Return {split: text} for the WikiText-2 raw splits ("train", "validation", "test").

    Looks in `data_dir`, else $TINYGRAD_CHAR_DATA_DIR, else the Hugging Face hub. From a
    folder, loads whichever of wiki.{train,valid,test}.raw exist and, with verbose, prints
    one line naming the missing ones. `max_lines=N` keeps the first N lines of each split.
    Raises DataError naming both fixes when nothing can be loaded (HubUnavailable, a
    DataError, when it was the hub that failed).
    """
    _check_max_lines(max_lines)
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if data_dir is not None:
        splits = _load_wikitext2_from_dir(data_dir, verbose)
    else:
        splits = _load_wikitext2_from_hub()
    if max_lines is not None:
        splits = {split: _first_lines(text, max_lines) for split, text in splits.items()}
    return splits


def load_text(path):
    """Return the text of a UTF-8 file exactly as stored; DataError if missing or empty."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"text file {path} {what}; pass the path of a UTF-8 text file")
    text = _read_utf8(path)
    if not text:
        raise DataError(f"text file {path} is empty; it needs some text to train on")
    return text


def load_sample_text():
    """Return the packaged sample text: seven Shakespeare tragedies, 993,274 ASCII characters.

    Public domain; where it comes from and why it is free to use: sample_data/SOURCE.md.
    Stored gzip-compressed inside the package (found with importlib.resources, so it works
    from a wheel as well as from a source checkout).
    """
    resource = resources.files("tinygrad_char") / "sample_data" / SAMPLE_FILE
    try:
        return gzip.decompress(resource.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:  # missing or damaged installation
        raise DataError(f"the packaged sample text sample_data/{SAMPLE_FILE} cannot be read "
                        f"({e}); reinstall tinygrad-char, or pass --data-dir DIR") from None


@dataclass
class CharData:
    """A corpus ready to train on: the tokenizer and each split as int64 ids (n,)."""

    tokenizer: CharTokenizer  # built from the training text only
    train_ids: np.ndarray  # (n_train,) int64
    val_ids: np.ndarray  # (n_val,) int64
    test_ids: np.ndarray | None  # (n_test,) int64, or None when there is no test set
    # names the data set and how it is split ("trained on the WikiText-2 train split; ..."),
    # for logs, results and checkpoints: the sample text's says so, never WikiText-2
    description: str
    unknown_counts: dict  # evaluation split -> characters mapped to <unk> (outside the vocab)


def _split_tail(text, fraction):
    """(head, tail): the tail holds the last `fraction` of the characters."""
    cut = len(text) - int(len(text) * fraction)
    return text[:cut], text[cut:]


def _encode_splits(train_text, eval_texts, description, verbose):
    """Build CharData: tokenizer from train_text; eval_texts maps "validation"/"test" to text."""
    tokenizer = CharTokenizer.from_text(train_text)
    eval_ids = {split: tokenizer.encode(text) for split, text in eval_texts.items()}
    unknown_counts = {split: int(np.count_nonzero(ids == tokenizer.unk_id))
                      for split, ids in eval_ids.items()}
    if verbose:
        for split, count in unknown_counts.items():
            print(f"{split}: {count} characters not in the training vocabulary mapped to <unk>")
    return CharData(tokenizer=tokenizer, train_ids=tokenizer.encode(train_text),
                    val_ids=eval_ids["validation"], test_ids=eval_ids.get("test"),
                    description=description, unknown_counts=unknown_counts)


def _check_val_fraction(val_fraction):
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")


def _prepare_one_text(text, what, name, val_fraction, verbose):
    """CharData of one text: the first 1 - val_fraction trains, the rest validates.

    what: the text in an error message ("text file a.txt"); name: in the description.
    """
    train_text, val_text = _split_tail(text, val_fraction)
    if len(train_text) < 2 or len(val_text) < 2:
        raise DataError(f"{what} is too short ({len(text)} characters) to split into "
                        f"training and validation parts of 2 or more characters")
    train_pct = round(100 * (1 - val_fraction))
    description = f"trained on {name} (first {train_pct}%); validated on the " \
                  f"last {100 - train_pct}%"
    return _encode_splits(train_text, {"validation": val_text}, description, verbose)


def prepare_text(path, val_fraction=0.1, verbose=True):
    """Any UTF-8 text file: train on the first 1 - val_fraction, validate on the rest."""
    _check_val_fraction(val_fraction)
    text = load_text(path)
    return _prepare_one_text(text, f"text file {path}", Path(path).name, val_fraction, verbose)


def prepare_sample_text(val_fraction=0.1, max_lines=None, verbose=True):
    """The packaged sample text (`load_sample_text`), split like `prepare_text`.

    `max_lines=N` keeps its first N lines. The description starts "trained on the packaged
    sample text, seven Shakespeare tragedies, not WikiText-2".
    """
    _check_val_fraction(val_fraction)
    _check_max_lines(max_lines)
    text = load_sample_text()
    name = f"{SAMPLE_NAME}, not WikiText-2"
    if max_lines is not None:
        text = _first_lines(text, max_lines)
        name += f", first {max_lines} lines only"
    data = _prepare_one_text(text, SAMPLE_NAME, name, val_fraction, verbose)
    data.description += "; no test set"
    return data


def prepare_wikitext2(data_dir=None, train_split="train", max_lines=None, verbose=True,
                      fallback=True):
    """Load WikiText-2, build the tokenizer from the training text, and encode every split.

    Validation is the "validation" split, except when that split is not there or is itself
    trained on: then the training split's last 10% (by characters) is held out for
    validation and the model trains on its first 90%. Test is the "test" split unless it
    trains (then test_ids is None). With verbose, prints which files are missing and one
    line per evaluation split counting the characters outside the training vocabulary.

    Fallback: with no data folder (neither `data_dir` nor $TINYGRAD_CHAR_DATA_DIR) and the
    hub unable to give WikiText-2, `fallback=True` returns `prepare_sample_text(max_lines)`
    instead and, with verbose, prints one line saying so; its description names the sample
    text. `fallback=False` raises the DataError. A data folder that fails never falls back.
    """
    if train_split not in WIKITEXT2_FILES:
        raise DataError(f"cannot train on split {train_split!r}: it is not a WikiText-2 "
                        f"split; use one of {', '.join(WIKITEXT2_FILES)}")
    _check_max_lines(max_lines)
    try:
        splits = load_wikitext2(data_dir, max_lines=max_lines, verbose=verbose)
    except HubUnavailable as e:  # only the hub raises it: a given folder never falls back
        if not fallback:
            raise
        if verbose:
            ignored = f" (--train-split {train_split} does not apply to it)" \
                if train_split != "train" else ""
            print(f"*** WikiText-2 unavailable ({e.reason}): training on {SAMPLE_NAME}, "
                  f"instead{ignored}; its figures are NOT WikiText-2's. For WikiText-2 pass "
                  f"--data-dir DIR or go online; --data-fallback false makes this an error "
                  f"***")
        return prepare_sample_text(max_lines=max_lines, verbose=verbose)
    if train_split not in splits:
        other = "validation" if "validation" in splits else next(iter(splits))
        raise DataError(f"cannot train on split {train_split!r}: it is not loaded; available "
                        f"splits: {', '.join(splits)}; pass --train-split {other} to train on "
                        f"the first 90% of the {other} split (its last 10% validates)")
    text = splits[train_split]
    lines = f" (first {max_lines} lines of each split)" if max_lines else ""
    if train_split == "train" and "validation" in splits:
        train_text, eval_texts = text, {"validation": splits["validation"]}
        description = f"trained on the WikiText-2 train split{lines}; validated on the " \
                      f"validation split"
    else:
        train_text, held_out = _split_tail(text, HELD_OUT_FRACTION)
        eval_texts = {"validation": held_out}
        description = f"trained on the WikiText-2 {train_split} split (first 90%){lines}; " \
                      f"validated on its last 10%"
    if "test" in splits and train_split != "test":
        eval_texts["test"] = splits["test"]
        description += "; tested on the test split"
    else:
        description += "; no test set (the test split " \
                       f"{'trains' if train_split == 'test' else 'is missing'})"
    return _encode_splits(train_text, eval_texts, description, verbose)


def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")


def batch_starts(n, batch_size, block_size, rng):
    """(batch_size,) random window starts in a split of n ids: 0 <= start <= n - T - 1.

    rng: a numpy.random.Generator; the same seed gives the same starts.
    """
    _check_positive(batch_size=batch_size, block_size=block_size)
    if n < block_size + 1:
        raise DataError(f"split has {n} characters, fewer than block_size + 1 = "
                        f"{block_size + 1}; use a smaller block_size or more text")
    return rng.integers(0, n - block_size, size=batch_size)


def windows(ids, starts, block_size):
    """Cut the windows that begin at `starts` out of `ids` (NumPy or CuPy, both the same).

    Returns x (B, T) = ids[start : start + T] and y (B, T) = ids[start + 1 : start + T + 1],
    the inputs and their next-character targets.
    """
    xp = get_array_module(ids)
    idx = starts[:, None] + xp.arange(block_size)  # (B, T)
    return ids[idx], ids[idx + 1]


def get_batch(ids, batch_size, block_size, rng):
    """Draw `batch_size` random windows of block_size + 1 ids from a split.

    Args:
        ids: (n,) int64 ids of one split.
        rng: a numpy.random.Generator; the same seed gives the same batches.
    Returns:
        x: (B, T) int64 inputs, window[:-1].
        y: (B, T) int64 targets, window[1:] (x shifted left by one).
    """
    return windows(ids, batch_starts(len(ids), batch_size, block_size, rng), block_size)


def count_eval_targets(ids):
    """How many (input, next) pairs a split of n ids holds: n - 1."""
    return max(len(ids) - 1, 0)


def eval_batches(ids, block_size, batch_size):
    """Return an iterator of (x, y) batches scoring every (input, next) pair exactly once.

    The n - 1 pairs are cut into consecutive windows of block_size; the last window is
    padded with inputs 0 and targets -1 (ignored by the loss). Windows are grouped into
    batches of batch_size rows; the last batch may have fewer.
    Each batch:
        x: (b, T) int64 inputs, y: (b, T) int64 targets, b <= batch_size.
    """
    _check_positive(batch_size=batch_size, block_size=block_size)
    n_pairs = count_eval_targets(ids)
    if n_pairs < 1:
        raise DataError(f"split has {len(ids)} characters; evaluation needs at least 2")
    n_windows = -(-n_pairs // block_size)  # ceil
    x = np.zeros(n_windows * block_size, dtype=np.int64)
    y = np.full(n_windows * block_size, IGNORE_INDEX, dtype=np.int64)
    x[:n_pairs] = ids[:-1]
    y[:n_pairs] = ids[1:]
    x = x.reshape(n_windows, block_size)  # (n_windows, T)
    y = y.reshape(n_windows, block_size)  # (n_windows, T)
    # a generator expression, not `yield`, so bad arguments raise here and not at first use
    return ((x[row:row + batch_size], y[row:row + batch_size])
            for row in range(0, n_windows, batch_size))
