"""Tests for tinygrad_char.training.train at the library level: exact resume after Ctrl-C, what an
interrupted run leaves behind, divergence (NonFiniteLoss) leaving the last good checkpoint
untouched, resume refusing another architecture or vocabulary, evaluate() against a
hand computation, the metrics log and loss curve, and a model that actually learns.

Every run is a tiny model (1-2 layers, 16 wide, context 16) on the first 50 KB of Tiny
Shakespeare, so each test takes well under a few seconds on two CPU cores. Ctrl-C is
simulated in-process: a wrapped windows() (called once per step) raises SIGINT at a chosen
step, and the training loop's own handler takes it.
"""

import json
import math
import signal
import sys
from dataclasses import replace

import numpy as np
import pytest

import tinygrad_char.training.train as train_module
from conftest import (TOL, interrupt_at, quiet, read_safetensors,
                      shakespeare_prefix, tiny_train_config)
from tinygrad_char import GPT, AdamW, GPTConfig
from tinygrad_char.training.checkpoint import (load_checkpoint, load_training_state,
                                               train_state_path)
from tinygrad_char.training.data import CharData, prepare_text
from tinygrad_char.model import ConfigError
from tinygrad_char.training.tokenizer import CharTokenizer
from tinygrad_char.training.train import NonFiniteLoss, evaluate, plot_losses, train

@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    """CharData of the first 50,000 characters of Tiny Shakespeare (90% train, 10% val)."""
    return shakespeare_prefix(tmp_path_factory, 50_000)


def read_log(out_dir):
    with open(f"{out_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


# -- Ctrl-C and exact resume ------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_after_ctrl_c_is_bit_identical(shakespeare, tmp_path, monkeypatch, dropout):
    """2N steps in one run == N steps, Ctrl-C, --resume to 2N: every parameter, every AdamW
    moment and every logged loss bit for bit, with and without dropout. N = 7 is not a log
    or evaluation step, so the interrupted checkpoint is not one the schedule would save."""
    N = 7
    full = tiny_train_config(tmp_path / "full", max_steps=2 * N, dropout=dropout, log_interval=2,
                       eval_interval=4)
    whole = train(full, shakespeare, progress=False, out=quiet)
    assert whole["step"] == 2 * N

    cut = replace(full, out_dir=str(tmp_path / "cut"))
    interrupt_at(monkeypatch, N)
    first = train(cut, shakespeare, progress=False, out=quiet)
    assert first == {"interrupted": True, "step": N, "checkpoint": str(tmp_path / "cut" /
                                                                         "ckpt.safetensors")}
    monkeypatch.undo()
    second = train(cut, shakespeare, resume=first["checkpoint"], progress=False, out=quiet)
    assert second["step"] == 2 * N

    pairs = [(whole["checkpoint"], second["checkpoint"]),  # model files, then companions
             (train_state_path(whole["checkpoint"]), train_state_path(second["checkpoint"]))]
    for path, cut_path in pairs:
        expected, expected_meta = read_safetensors(path)
        got, got_meta = read_safetensors(cut_path)
        assert sorted(got) == sorted(expected), path
        for name in expected:
            assert np.array_equal(got[name], expected[name]), \
                f"{name} differs after resume (dropout {dropout}, {path})"
        assert got_meta["step"] == expected_meta["step"] == str(2 * N)
        if "optimizer" in expected_meta:  # AdamW's step count and hyperparameters
            assert json.loads(got_meta["optimizer"]) == json.loads(expected_meta["optimizer"])
    assert second["val_loss"] == whole["val_loss"]

    # the resumed log drops nothing and repeats nothing: the same records, the same losses
    def losses(records):
        return [(r["step"], r.get("final", False), r.get("train_loss"), r.get("val_loss"),
                 r.get("lr")) for r in records]

    assert losses(read_log(tmp_path / "cut")) == losses(read_log(tmp_path / "full"))


def test_ctrl_c_saves_a_resumable_checkpoint(shakespeare, tmp_path, monkeypatch):
    cfg = tiny_train_config(tmp_path, max_steps=50, eval_interval=20)
    printed = []
    previous_handler = signal.getsignal(signal.SIGINT)
    interrupt_at(monkeypatch, 3)
    result = train(cfg, shakespeare, progress=False, out=printed.append)

    assert result["interrupted"] is True and result["step"] == 3
    assert signal.getsignal(signal.SIGINT) is previous_handler, "SIGINT handler not restored"
    assert any(line.startswith("interrupted: saved step 3 to ") and "--resume" in line
               for line in printed), printed
    model, tokenizer, meta = load_checkpoint(result["checkpoint"])
    assert meta["step"] == 3
    assert tokenizer == shakespeare.tokenizer
    assert meta["train_path"] == train_state_path(result["checkpoint"])
    optimizer = AdamW(model.params)
    state = load_training_state(result["checkpoint"], optimizer)
    assert optimizer.step_count == 3
    assert state["step"] == 3 and state["train_config"]["max_steps"] == 50


# -- divergence -------------------------------------------------------------------------------

@pytest.mark.parametrize("poisoned_update, failing_step, what", [
    (7, 8, "loss"),  # between evaluations: the next step's training loss is NaN
    (10, 10, "validation loss"),  # an evaluation step's own update: caught before its save
])
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(shakespeare, tmp_path,
                                                             monkeypatch, poisoned_update,
                                                             failing_step, what):
    """The update of step `poisoned_update` turns every parameter into NaN; train() must
    raise NonFiniteLoss naming the step and the checkpoint, and leave the step-5 checkpoint
    byte for byte as it was before the blow-up."""
    cfg = tiny_train_config(tmp_path, max_steps=20, eval_interval=5)
    ckpt = tmp_path / "ckpt.safetensors"
    calls, before = [], {}
    real_update = train_module.clip_and_step

    def poisoning_update(grads, *args, **kwargs):
        calls.append(1)
        if len(calls) == poisoned_update:
            before["ckpt"] = ckpt.read_bytes()
            before["train"] = open(train_state_path(ckpt), "rb").read()
            for g in grads.values():
                g[...] = np.nan
        return real_update(grads, *args, **kwargs)

    monkeypatch.setattr(train_module, "clip_and_step", poisoning_update)
    with pytest.raises(NonFiniteLoss) as info:
        train(cfg, shakespeare, progress=False, out=quiet)
    message = str(info.value)
    assert f"{what} became nan at step {failing_step}" in message
    assert f"last good checkpoint ({ckpt}) is intact" in message
    assert ckpt.read_bytes() == before["ckpt"]
    assert open(train_state_path(ckpt), "rb").read() == before["train"]
    assert load_checkpoint(ckpt)[2]["step"] == 5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to NaN
def test_huge_learning_rate_raises_non_finite_loss(shakespeare, tmp_path):
    """A real divergence (no monkeypatching) before the first evaluation: the message says
    no checkpoint was saved rather than pointing at one that does not exist."""
    cfg = tiny_train_config(tmp_path, max_steps=50, eval_interval=50, learning_rate=1e6, min_lr=0.0,
                      warmup_steps=0, grad_clip=0.0)
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf|-inf) at step \d+: "
                                            r"stopping; no checkpoint was saved before it"):
        train(cfg, shakespeare, progress=False, out=quiet)
    assert not (tmp_path / "ckpt.safetensors").exists()


# -- resume refuses what it cannot continue ---------------------------------------------------

@pytest.fixture(scope="module")
def short_run(shakespeare, tmp_path_factory):
    """A finished 3-step run: (config, checkpoint path)."""
    cfg = tiny_train_config(tmp_path_factory.mktemp("short"), max_steps=3, eval_interval=3)
    return cfg, train(cfg, shakespeare, progress=False, out=quiet)["checkpoint"]


@pytest.mark.parametrize("field, value", [("n_embd", 32), ("n_layer", 2),
                                          ("pos_encoding", "sinusoidal")])
def test_resume_with_another_architecture_is_refused(shakespeare, short_run, tmp_path, field,
                                                     value):
    cfg, ckpt = short_run
    other = replace(cfg, out_dir=str(tmp_path), max_steps=6, **{field: value})
    with pytest.raises(ConfigError, match=f"architecture differs.*'{field}'"):
        train(other, shakespeare, resume=ckpt, progress=False, out=quiet)


def test_resume_with_another_vocabulary_is_refused(shakespeare, short_run, tmp_path):
    cfg, ckpt = short_run
    chars = shakespeare.tokenizer.chars
    # the same number of characters, one of them different: same architecture, other ids
    swapped = chars[:-1] + ("~" if chars[-1] != "~" else "^")
    data = CharData(CharTokenizer(swapped), shakespeare.train_ids, shakespeare.val_ids, None,
                    "a vocabulary with one character swapped", {})
    with pytest.raises(ConfigError, match="vocabulary differs"):
        train(replace(cfg, out_dir=str(tmp_path), max_steps=6), data, resume=ckpt,
              progress=False, out=quiet)

    # a vocabulary of another size changes the embedding: refused as an architecture change
    bigger = CharData(CharTokenizer(chars + "\u00e9"), shakespeare.train_ids,
                      shakespeare.val_ids, None, "one more character", {})
    with pytest.raises(ConfigError, match="vocab_size"):
        train(replace(cfg, out_dir=str(tmp_path), max_steps=6), bigger, resume=ckpt,
              progress=False, out=quiet)


# -- evaluate ---------------------------------------------------------------------------------

def naive_nll(model, ids, block_size):
    """-log p(next | context) of every (input, next) pair of `ids`, written independently of
    eval_batches: consecutive windows of block_size pairs, the last one shorter, each run
    through model.forward on its own (no padding), log-softmax in float64."""
    nll = []
    for start in range(0, len(ids) - 1, block_size):
        y = ids[start + 1:start + 1 + block_size]
        x = ids[start:start + len(y)]
        logits, _ = model.forward(x[None, :])  # (1, t, V)
        logits = np.asarray(logits[0], dtype=np.float64)  # (t, V)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll.extend(-log_probs[np.arange(len(y)), y])
    return np.array(nll)


@pytest.fixture
def eval_model(shakespeare):
    """A float64 2-layer GPT with dropout, left in training mode (evaluate must switch)."""
    config = GPTConfig(vocab_size=shakespeare.tokenizer.vocab_size, block_size=8, n_layer=2,
                       n_head=2, n_embd=16, dropout=0.3)
    return GPT(config, dtype="float64", seed=3).train()


def test_evaluate_equals_a_hand_computation(shakespeare, eval_model):
    ids = shakespeare.val_ids[:43]  # 42 pairs: 5 full windows of 8 and one of 2
    eval_model.eval()
    expected = naive_nll(eval_model, ids, 8)
    eval_model.train()
    assert len(expected) == 42

    loss, count = evaluate(eval_model, ids, block_size=8, batch_size=4)
    assert count == 42
    assert abs(loss - expected.mean()) <= TOL["float64"] * expected.mean(), \
        f"evaluate {loss} vs hand computation {expected.mean()}"
    assert eval_model.training, "evaluate() must restore training mode"
    # deterministic: dropout is off inside evaluate, so repeated calls agree exactly
    assert evaluate(eval_model, ids, block_size=8, batch_size=4) == (loss, count)
    assert evaluate(eval_model, ids, block_size=8, batch_size=42) == pytest.approx((loss, 42),
                                                                                rel=1e-12)


def test_evaluate_max_batches_uses_the_first_batches(shakespeare, eval_model):
    ids = shakespeare.val_ids[:43]
    eval_model.eval()
    expected = naive_nll(eval_model, ids, 8)

    loss, count = evaluate(eval_model, ids, block_size=8, batch_size=2, max_batches=1)
    assert count == 16  # one batch = the first two windows of 8 pairs
    assert abs(loss - expected[:16].mean()) <= TOL["float64"] * expected[:16].mean()
    loss, count = evaluate(eval_model, ids, block_size=8, batch_size=2, max_batches=2)
    assert count == 32
    assert abs(loss - expected[:32].mean()) <= TOL["float64"] * expected[:32].mean()
    # more batches than the split has: the whole split
    assert evaluate(eval_model, ids, 8, 2, max_batches=99) == evaluate(eval_model, ids, 8, 2)


# -- the metrics log and the loss curve -------------------------------------------------------

def test_metrics_log_has_every_record(shakespeare, tmp_path):
    """log_interval 3 and eval_interval 5 (not a multiple of 3): records at the log steps
    3, 6, 9, at the evaluation steps 5 and 10, and at the last step, then a final record."""
    cfg = tiny_train_config(tmp_path, max_steps=10, log_interval=3, eval_interval=5, eval_batches=0)
    result = train(cfg, shakespeare, progress=False, out=quiet)
    records = read_log(tmp_path)

    steps = [r["step"] for r in records if not r.get("final")]
    assert steps == [3, 5, 6, 9, 10]
    for r in records[:-1]:
        assert set(r) >= {"step", "train_loss", "lr", "tokens_per_sec"}, r
        assert math.isfinite(r["train_loss"]) and r["tokens_per_sec"] > 0
        assert 0 < r["lr"] <= cfg.learning_rate
    evaluated = [r for r in records[:-1] if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [5, 10]
    for r in evaluated:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        assert (tmp_path / "ckpt.safetensors").exists()

    final = records[-1]
    assert final["final"] is True and final["step"] == 10
    assert final["val_loss"] == result["val_loss"]
    assert final["val_chars"] == len(shakespeare.val_ids) - 1
    # eval_batches 0: the step-10 evaluation is the whole split, as the final one
    assert evaluated[-1]["val_loss"] == pytest.approx(final["val_loss"], rel=1e-12)


def test_loss_png_is_drawn_with_matplotlib(shakespeare, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the [plot] extra) draws loss.png")
    result = train(tiny_train_config(tmp_path, max_steps=6, eval_interval=3), shakespeare,
                   progress=False, out=quiet)
    png = tmp_path / "loss.png"
    assert result["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_one_note_and_no_png(shakespeare, tmp_path, monkeypatch):
    # a None entry in sys.modules makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    printed = []
    result = train(tiny_train_config(tmp_path, max_steps=4, eval_interval=2), shakespeare,
                   progress=False, out=printed.append)
    notes = [line for line in printed if "matplotlib" in line]
    assert notes == ["loss curve not drawn: matplotlib is not installed (pip install "
                     "'tinygrad-char[plot]')"]
    assert result["plot"] is None
    assert not (tmp_path / "loss.png").exists()
    assert plot_losses(str(tmp_path / "metrics.jsonl"), str(tmp_path / "x.png"), quiet) is None


# -- it learns --------------------------------------------------------------------------------

def test_training_learns_a_repetitive_text(tmp_path):
    """A line repeated 300 times is almost deterministic given a few characters of context:
    a tiny model must get far below the uniform guess ln(V) within 300 steps."""
    text_file = tmp_path / "repeat.txt"
    text_file.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    data = prepare_text(text_file, verbose=False)
    cfg = tiny_train_config(tmp_path / "out", n_embd=32, batch_size=8, max_steps=300,
                      learning_rate=1e-2, min_lr=1e-3, warmup_steps=20, eval_interval=300)
    result = train(cfg, data, progress=False, out=quiet)
    uniform = math.log(data.tokenizer.vocab_size)
    assert result["val_loss"] < 0.15 * uniform, \
        f"val loss {result['val_loss']:.3f} after 300 steps (ln V = {uniform:.3f})"


def test_each_step_trains_on_get_batch_of_its_step_seed(shakespeare, tmp_path, monkeypatch):
    """The loop cuts its batches from starts drawn a log interval ahead; step s's batch is
    exactly get_batch(train split, B, T, default_rng(step_seed(seed, s))), whatever the log
    interval (so runs and resumes see the same data on every backend)."""
    from tinygrad_char.training.data import get_batch
    from tinygrad_char.training.train import step_seed

    seen = []
    real_windows = train_module.windows

    def windows(*args, **kwargs):
        x, y = real_windows(*args, **kwargs)
        seen.append((np.array(x), np.array(y)))
        return x, y

    monkeypatch.setattr(train_module, "windows", windows)
    cfg = tiny_train_config(tmp_path, max_steps=7, log_interval=3, eval_interval=7)
    train(cfg, shakespeare, progress=False, out=quiet)
    assert len(seen) == 7
    for step, (x, y) in enumerate(seen):
        want = get_batch(shakespeare.train_ids, cfg.batch_size, cfg.block_size,
                         np.random.default_rng(step_seed(cfg.seed, step)))
        assert np.array_equal(x, want[0]) and np.array_equal(y, want[1]), step


# -- a second Ctrl-C, finished and extended runs, warm-up, evaluation ---------------------

def test_a_second_ctrl_c_stops_at_once_and_what_is_on_disk_resumes(shakespeare, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C at step 3, and again while that step's checkpoint is being written: one line
    naming the last step fully saved (2, an evaluation step), no KeyboardInterrupt, and the
    checkpoint on disk loads and resumes."""
    cfg = tiny_train_config(tmp_path, max_steps=20, eval_interval=2)
    real_save = train_module.save_checkpoint
    saves = []

    def save_then_ctrl_c(*args, **kwargs):
        saves.append(args[3])  # the step
        if args[3] == 3:
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C, inside the save
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_ctrl_c)
    interrupt_at(monkeypatch, 3)
    printed = []
    result = train(cfg, shakespeare, progress=False, out=printed.append)
    assert saves == [2, 3]
    assert printed[-1] == "interrupted again: stopping now, last saved step 2", printed
    assert result == {"interrupted": True, "step": 2,
                      "checkpoint": str(tmp_path / "ckpt.safetensors")}
    monkeypatch.undo()
    model, _, meta = load_checkpoint(result["checkpoint"])
    assert meta["step"] == 2
    resumed = train(replace(cfg, max_steps=4), shakespeare, resume=result["checkpoint"],
                    progress=False, out=quiet)
    assert resumed["step"] == 4


def test_resuming_a_finished_run_says_so_and_stops(shakespeare, short_run, tmp_path,
                                                   monkeypatch):
    cfg, ckpt = short_run
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    printed = []
    result = train(replace(cfg, out_dir=str(tmp_path)), shakespeare, resume=ckpt,
                   progress=False, out=printed.append)
    assert result == {"step": 3, "checkpoint": ckpt, "already_done": True}
    assert any(f"{ckpt} is already at step 3, --max-steps is 3: nothing to train; pass a "
               "larger --max-steps" in line for line in printed), printed


def test_extending_a_run_redraws_the_cosine_and_says_so(shakespeare, tmp_path):
    """The schedule is a function of the step and this run's --max-steps: resuming a
    10-step run at step 10 with --max-steps 20 continues at cosine_lr(10, ..., 20)."""
    from tinygrad_char.optim import cosine_lr

    cfg = tiny_train_config(tmp_path, max_steps=10, eval_interval=10)
    first = train(cfg, shakespeare, progress=False, out=quiet)
    longer = replace(cfg, max_steps=20)
    printed = []
    train(longer, shakespeare, resume=first["checkpoint"], progress=False,
          out=printed.append)
    new = cosine_lr(10, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, 20)
    old = cosine_lr(10, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, 10)
    assert old == cfg.min_lr and new > 2 * old
    assert (f"schedule: the checkpoint's run had --max-steps 10, this one 20: the cosine is "
            f"redrawn over the new length, so at step 10 the learning rate is {new:.3g} "
            f"(it was {old:.3g})") in printed, printed
    step_11 = [r for r in read_log(tmp_path) if r["step"] == 11][0]
    assert step_11["lr"] == new


def test_a_run_shorter_than_its_warm_up_is_warned_about(shakespeare, tmp_path):
    printed = []
    train(tiny_train_config(tmp_path, max_steps=3, warmup_steps=5, eval_interval=3),
          shakespeare, progress=False, out=printed.append)
    warnings = [line for line in printed if line.startswith("warning: --max-steps 3 <= "
                                                            "--warmup-steps 5")]
    assert len(warnings) == 1 and "never leaves warm-up" in warnings[0], printed
    printed.clear()
    train(tiny_train_config(tmp_path, max_steps=6, warmup_steps=5, eval_interval=6),
          shakespeare, progress=False, out=printed.append)
    assert not any(line.startswith("warning:") for line in printed)


class _HalfWorld:
    """Rank `rank` of a 2-rank world whose reductions are the identity (the test adds the
    two ranks' sums itself)."""
    world_size = 2

    def __init__(self, rank):
        self.rank = rank

    def allreduce_sum(self, values):
        return values


def test_evaluation_split_over_ranks_adds_up_to_the_whole(shakespeare, eval_model):
    """Rank r scores batches r, r + 2, ...: the two ranks' sums are the whole split's."""
    ids = shakespeare.val_ids[:300]
    loss, count = evaluate(eval_model, ids, block_size=8, batch_size=3)
    parts = [evaluate(eval_model, ids, 8, 3, world=_HalfWorld(r)) for r in (0, 1)]
    assert parts[0][1] + parts[1][1] == count == 299 and parts[1][1] > 0
    total = sum(part_loss * n for part_loss, n in parts)
    assert abs(total / count - loss) <= TOL["float64"] * loss


def test_evaluations_show_a_progress_bar_and_their_time(shakespeare, tmp_path, capsys):
    printed = []
    train(tiny_train_config(tmp_path, max_steps=2, eval_interval=2), shakespeare,
          progress=True, out=printed.append)
    shown = capsys.readouterr().out
    assert "validation (whole split)" in shown and "batch" in shown
    final = [line for line in printed if line.startswith("validation (whole split, ")]
    assert len(final) == 1 and " s): loss " in final[0], printed
    record = read_log(tmp_path)[-1]
    assert record["final"] and record["val_seconds"] >= 0


def test_two_quick_ctrl_cs_on_the_command_line_leave_no_traceback(tmp_path):
    """The real script and real signals: Ctrl-C twice 5 ms apart ends the run with status
    130, no traceback, and the checkpoint on disk resumes."""
    import os
    import subprocess
    import time

    from conftest import REPO, sample_text

    text = tmp_path / "text.txt"
    text.write_text(sample_text(30_000), encoding="utf-8")
    cmd = [sys.executable, str(REPO / "examples" / "train_text.py"), "--text", str(text),
           "--out-dir", str(tmp_path / "run"), "--no-progress", "--n-layer", "1", "--n-head",
           "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--max-steps",
           "1000000", "--eval-interval", "3", "--eval-batches", "1", "--log-interval", "1",
           "--sample-chars", "0"]
    env = dict(os.environ, TINYGRAD_CHAR_MPI="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        ckpt = tmp_path / "run" / "ckpt.safetensors"
        deadline = time.monotonic() + 60
        while not ckpt.exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out, err
    lines = [line for line in (out + err).splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, out + err
    model, _, meta = load_checkpoint(ckpt)
    assert load_training_state(ckpt, AdamW(model.params))["step"] == meta["step"] >= 3
