"""Tests for the training scripts as a user runs them: examples/train_wikitext.py and
examples/train_text.py in a subprocess (exit codes, what they print, what they write), the
configuration precedence defaults < --preset < --config FILE < flags, every preset in
examples/configs, one-line errors for bad input, and Ctrl-C followed by --resume.

The WikiText-2 runs read, offline, a folder with WikiText-2's layout cut from the packaged
sample text (wiki.valid.raw and wiki.test.raw, no train file, so the runs train on the
validation split's first 90%), cut to its first 200 lines; the model is 1 layer, 16 wide,
context 16.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import CUPY_MISSING, REPO, sample_text, wikitext_like_dir
from tinygrad_char.training.checkpoint import load_checkpoint
from tinygrad_char.training.cli import UsageError
from tinygrad_char.training.config import TrainConfig, build_parser, resolve_config

WIKITEXT = wikitext_like_dir()  # the layout of WikiText-2, cut from the sample text
PRESETS = REPO / "examples" / "configs"
TRAIN_WIKITEXT = str(REPO / "examples" / "train_wikitext.py")
TRAIN_TEXT = str(REPO / "examples" / "train_text.py")
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--warmup-steps", "5", "--eval-batches", "2",
        "--sample-chars", "40", "--no-progress"]
WIKI = ["--data-dir", str(WIKITEXT), "--train-split", "validation", "--max-lines", "200"]


def script_env():
    """The environment for a script: unbuffered output (read line by line while it runs),
    no hub access, no data folder inherited from the caller."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("TINYGRAD_CHAR_DATA_DIR", None)
    return env


def run(script, *args, timeout=120):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, env=script_env(), timeout=timeout)


def assert_one_line_error(proc, *fragments, code=2):
    """Exit status `code`, and stderr exactly one line "error: ..." holding `fragments`."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert proc.returncode == code, (proc.returncode, proc.stderr)


# -- a whole run ------------------------------------------------------------------------------

def test_train_wikitext_offline_end_to_end(tmp_path):
    proc = run(TRAIN_WIKITEXT, *WIKI, *TINY, "--max-steps", "20", "--eval-interval", "10",
               "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    val = re.search(r"^validation \(whole split, [\d,]+ predictions(?:, [\d.]+ s)?\): "
                    r"loss ([\d.]+), "
                    r"([\d.]+) bpc$", out, re.M)
    test = re.search(r"^test \(whole split, [\d,]+ predictions(?:, [\d.]+ s)?\): "
                     r"loss ([\d.]+), "
                     r"([\d.]+) bpc", out, re.M)
    assert val and test, out
    for match in (val, test):
        loss, bpc = map(float, match.groups())
        assert 0 < bpc < 8 and bpc == pytest.approx(loss / 0.6931471805599453, abs=2e-3)
    assert re.search(r"^step 10: train loss [\d.]+, val loss [\d.]+", out, re.M), out
    sample = out.split("sample:\n", 1)
    assert len(sample) == 2 and len(sample[1]) >= 40, out

    _, _, meta = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert meta["step"] == 20 and meta["train_path"] is not None
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records[-1]["final"] is True and records[-1]["step"] == 20
    assert "test_bpc" in records[-1]


def test_train_text_runs_and_requires_text(tmp_path):
    text = tmp_path / "shakespeare_20k.txt"
    text.write_text(sample_text(20_000), encoding="utf-8")
    proc = run(TRAIN_TEXT, "--text", text, *TINY, "--max-steps", "10", "--eval-interval", "5",
               "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^validation \(whole split, [\d,]+ predictions", proc.stdout, re.M)
    assert not re.search(r"^test \(", proc.stdout, re.M)  # a text file has no test split
    assert load_checkpoint(tmp_path / "out" / "ckpt.safetensors")[2]["step"] == 10

    assert_one_line_error(run(TRAIN_TEXT, *TINY), "required", "--text")


# -- configuration ----------------------------------------------------------------------------

def test_precedence_defaults_preset_config_file_flags(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"_comment": "ignored", "n_layer": 5,
                                       "learning_rate": 5e-3, "min_lr": 1e-4}))
    parser = build_parser("test", str(PRESETS))

    def resolve(*argv):
        return resolve_config(parser.parse_args(argv), str(PRESETS))

    defaults = TrainConfig()
    assert resolve() == defaults
    preset = resolve("--preset", "small_dropout")
    assert (preset.n_layer, preset.dropout, preset.batch_size) == (3, 0.2, 32)  # preset
    assert preset.log_interval == defaults.log_interval  # not in the preset: default
    with_file = resolve("--preset", "small_dropout", "--config", str(config_file))
    assert (with_file.n_layer, with_file.learning_rate) == (5, 5e-3)  # file beats preset
    assert with_file.dropout == 0.2  # preset beats default
    with_flags = resolve("--preset", "small_dropout", "--config", str(config_file),
                         "--n-layer", "2", "--dropout", "0", "--tie-weights", "false")
    assert (with_flags.n_layer, with_flags.dropout, with_flags.tie_weights) == (2, 0.0, False)
    assert with_flags.learning_rate == 5e-3 and with_flags.batch_size == 32
    assert resolve("--config", str(config_file)).batch_size == defaults.batch_size


def test_every_preset_loads_as_a_valid_config():
    names = sorted(p.stem for p in PRESETS.glob("*.json"))
    assert names, f"no presets in {PRESETS}"
    parser = build_parser("test", str(PRESETS))
    for name in names:
        cfg = resolve_config(parser.parse_args(["--preset", name]), str(PRESETS))
        values = json.loads((PRESETS / f"{name}.json").read_text())
        for key, value in values.items():
            if not key.startswith("_"):
                assert getattr(cfg, key) == value, f"preset {name}: {key}"
        cfg.model_config(vocab_size=100)  # a buildable GPTConfig
    with pytest.raises(UsageError, match="invalid choice"):  # exactly the files are offered
        parser.parse_args(["--preset", "no_such_preset"])


# -- one-line errors --------------------------------------------------------------------------

def bad_config_files(tmp_path):
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"n_layers": 2}')
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"n_layer": 2,')
    return unknown, malformed


@pytest.mark.parametrize("case", ["indivisible", "unknown_field", "malformed_json",
                                  "missing_data_dir", "missing_resume", "corrupt_resume"])
def test_bad_input_is_one_line_error(tmp_path, case):
    unknown, malformed = bad_config_files(tmp_path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    args, fragments = {
        "indivisible": (["--n-embd", "30", "--n-head", "4"], ["divisible"]),
        "unknown_field": (["--config", unknown], ["unknown field 'n_layers'"]),
        "malformed_json": (["--config", malformed], ["not valid JSON"]),
        "missing_data_dir": (["--data-dir", tmp_path / "nowhere"], ["does not exist"]),
        "missing_resume": (["--resume", tmp_path / "none.safetensors"], ["no such file"]),
        "corrupt_resume": (["--resume", corrupt], ["corrupt", str(corrupt)]),
    }[case]
    proc = run(TRAIN_WIKITEXT, *WIKI, *TINY, "--max-steps", "5", "--out-dir", tmp_path / "out",
               *args)
    assert_one_line_error(proc, *fragments)


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU works here: --backend cupy is valid")
def test_cupy_without_gpu_is_one_line_error(tmp_path):
    proc = run(TRAIN_WIKITEXT, *WIKI, *TINY, "--max-steps", "5", "--out-dir", tmp_path,
               "--backend", "cupy")
    assert_one_line_error(proc, "backend 'cupy' unavailable", "--backend numpy")


def test_divergence_is_an_error_line_not_a_traceback(tmp_path):
    proc = run(TRAIN_WIKITEXT, *WIKI, *TINY, "--max-steps", "50", "--eval-interval", "100",
               "--learning-rate", "1e6", "--min-lr", "0", "--warmup-steps", "0",
               "--grad-clip", "0", "--out-dir", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # NumPy's overflow warnings may come first; the last line is ours
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"error: loss became (nan|inf) at step \d+: stopping", last), last


# -- Ctrl-C and --resume ----------------------------------------------------------------------

@pytest.mark.parametrize("progress", [False, True])
def test_ctrl_c_saves_and_resume_finishes(tmp_path, progress):
    """SIGINT once training prints its first evaluation: said at once ("stopping after this
    step; ..."), then exit 130 after "interrupted: saved step K" on a line of its own (below
    the progress bar when there is one); the checkpoint at K loads; --resume runs from K to
    max_steps and exits 0."""
    tiny = [a for a in TINY if a != "--no-progress"] if progress else TINY
    args = [*WIKI, *tiny, "--max-steps", "120", "--eval-interval", "20", "--out-dir", tmp_path]
    proc = subprocess.Popen([sys.executable, TRAIN_WIKITEXT, *map(str, args)], cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=script_env())
    watchdog = threading.Timer(60, proc.kill)  # a hung run fails the test, not the suite
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:  # the first "step N:" line: the loop and its handler run
            seen.append(line)
            if re.search(r"(^|\r)step \d+: train loss", line):
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    out = "".join(seen) + rest
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in err, err
    said = re.search(r"(^|\r)stopping after this step; Ctrl-C again to stop now$", out, re.M)
    match = re.search(r"^interrupted: saved step (\d+) to (\S+); continue with --resume",
                      out, re.M)  # at the start of a line: not glued to the bar
    assert said and match and said.start() < match.start(), out
    k = int(match.group(1))
    assert 20 <= k < 120
    ckpt = tmp_path / "ckpt.safetensors"
    assert load_checkpoint(ckpt)[2]["step"] == k

    resumed = run(TRAIN_WIKITEXT, *args, "--resume", ckpt)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpt} at step {k}" in resumed.stdout
    assert load_checkpoint(ckpt)[2]["step"] == 120
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 1  # + the final record


@pytest.mark.slow
@pytest.mark.parametrize("gap_ms", [0, 5, 40])
def test_a_second_ctrl_c_soon_after_the_first_is_one_line_and_the_pair_resumes(tmp_path,
                                                                               gap_ms):
    """Two real SIGINTs `gap_ms` apart once training runs (the second lands in the step
    being finished, in the save, or after it): never a traceback, at most the one line
    "interrupted again: ...", and the checkpoint pair on disk loads and resumes."""
    from tinygrad_char import AdamW
    from tinygrad_char.training.checkpoint import load_training_state

    args = [*WIKI, *TINY, "--max-steps", "400", "--eval-interval", "10", "--out-dir",
            tmp_path]
    proc = subprocess.Popen([sys.executable, TRAIN_WIKITEXT, *map(str, args)], cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=script_env())
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        evaluations = 0
        for line in proc.stdout:
            evaluations += line.startswith("step ")
            if evaluations == 2:  # the first evaluation's save is done, the second's starts
                proc.send_signal(signal.SIGINT)
                time.sleep(gap_ms / 1000)
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode in (1, 130), (proc.returncode, out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    again = [l for l in (out + err).splitlines() if l.startswith("interrupted again")]
    assert len(again) <= 1 and all(re.match(r"interrupted again: stopping now, last "
                                            r"saved step \d+$", l) for l in again), again
    ckpt = tmp_path / "ckpt.safetensors"
    model, _, meta = load_checkpoint(ckpt)
    load_training_state(ckpt, AdamW(model.params))
    resumed = run(TRAIN_WIKITEXT, *args, "--max-steps", str(meta["step"] + 2),
                  "--resume", ckpt)
    assert resumed.returncode == 0, resumed.stderr
