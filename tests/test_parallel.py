"""CPU data parallelism (tinygrad_char.parallel): the split batch gives the whole batch's
loss and gradients, dropout shares are seeded per rank, training with workers resumes
exactly, and misuse is a clear error. Each DataParallel starts a spawned process (~1 s)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tinygrad_char import GPT
from tinygrad_char.model import ConfigError, GPTConfig
from tinygrad_char.parallel import DataParallel, SharedArrays, share_seed
from tinygrad_char.checkpoint import train_state_path
from tinygrad_char.config import TrainConfig
from tinygrad_char.train import train

from conftest import interrupt_at, quiet, read_safetensors, tiny_train_config

CFG = GPTConfig(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=16)


def batch(B=5, T=12, seed=0, ignore=()):
    r = np.random.default_rng(seed)
    x, y = r.integers(0, 29, (B, T)), r.integers(0, 29, (B, T))
    for row, col in ignore:
        y[row, col] = -1
    return x, y


def test_shared_arrays_are_one_block_seen_from_a_second_attachment():
    layout = [("a", (2, 3), "<f4"), ("b", (5,), "<f8")]
    owner = SharedArrays(layout)
    other = SharedArrays(layout, owner.shm.name)
    try:
        owner.arrays["a"][...] = 7.0
        owner.arrays["b"][2] = -1.5
        assert other.arrays["a"].tolist() == [[7.0] * 3] * 2 and other.arrays["b"][2] == -1.5
        assert other.arrays["b"].dtype == np.float64
    finally:
        other.close()
        owner.close(unlink=True)


def test_split_batch_gives_the_whole_batch_loss_and_gradients():
    """float64, an odd batch (rows 3 + 2) and ignored targets unevenly spread: the weighted
    average of the shares is the whole batch's mean-loss gradient, to rounding."""
    x, y = batch(ignore=[(0, 1), (0, 2), (4, 5)])
    ref = GPT(CFG, dtype="float64", seed=1)
    _, loss_ref = ref.forward(x, y)
    grads_ref = ref.backward()
    model = GPT(CFG, dtype="float64", seed=1)
    with DataParallel(model, workers=2) as parallel:
        loss, grads = parallel.forward_backward(x, y, seed=3)
        assert all(type(p).__name__ == "ndarray" for p in model.params.values())
    assert abs(loss - float(loss_ref)) <= 1e-12 * float(loss_ref)
    for name, g in grads_ref.items():
        err = np.abs(grads[name] - g).max() / max(np.abs(g).max(), 1e-30)
        assert err <= 1e-12, f"{name}: {err:.1e}"
    for name, p in model.params.items():  # close() hands back ordinary copies
        assert p.base is None and np.array_equal(p, ref.params[name])


def test_each_share_draws_its_own_dropout_masks():
    """With dropout the result equals running the two shares by hand, each seeded with
    share_seed(step seed, rank), and averaging them by their numbers of targets."""
    cfg = replace(CFG, dropout=0.3)
    x, y = batch(B=4)
    by_hand = GPT(cfg, seed=2)
    parts = []
    for rank, rows in enumerate((slice(0, 2), slice(2, 4))):
        by_hand.seed_dropout(share_seed(11, rank))
        _, loss = by_hand.forward(x[rows], y[rows])
        parts.append((float(loss), by_hand.backward()))
    model = GPT(cfg, seed=2)
    with DataParallel(model, workers=2) as parallel:
        loss, grads = parallel.forward_backward(x, y, seed=11)
    assert abs(loss - (parts[0][0] + parts[1][0]) / 2) < 1e-6
    for name in grads:
        expected = (parts[0][1][name] + parts[1][1][name]) / 2
        np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    assert share_seed(11, 0) != share_seed(11, 1)


def test_a_worker_ignores_ctrl_c_so_the_caller_can_save():
    """A terminal's Ctrl-C goes to the whole process group; the workers must live on until
    the training loop has saved and closed them."""
    import os
    import signal
    import time

    model = GPT(CFG)
    with DataParallel(model, workers=2) as parallel:
        parallel.forward_backward(*batch(), seed=0)  # the worker is up and serving
        os.kill(parallel.procs[0].pid, signal.SIGINT)
        time.sleep(0.2)
        loss, _ = parallel.forward_backward(*batch(), seed=0)
        assert parallel.procs[0].is_alive() and np.isfinite(loss)


def test_misuse_is_a_clear_error():
    model = GPT(CFG)
    with pytest.raises(ValueError, match="workers >= 2"):
        DataParallel(model, workers=1)
    with DataParallel(model, workers=2) as parallel:
        with pytest.raises(ValueError, match="batch of 1 rows for 2 workers"):
            parallel.forward_backward(*batch(B=1), seed=0)


@pytest.mark.parametrize("values, message", [
    (dict(workers=5, batch_size=4), r"workers \(5\) must not exceed batch_size \(4\)"),
    (dict(workers=0), "workers must be >= 1"),
])
def test_bad_worker_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values).validate()


def test_training_with_two_workers_resumes_bit_identically(shakespeare_20k, tmp_path):
    """2N steps with workers=2 == N steps, Ctrl-C, resume to 2N (dropout on): parameters,
    AdamW moments and logged losses identical; and close to the one-process run."""
    N = 7
    cfg = tiny_train_config(tmp_path / "full", batch_size=5, max_steps=2 * N,
                            log_interval=2, eval_interval=4, dropout=0.2, workers=2)
    whole = train(cfg, shakespeare_20k, progress=False, out=quiet)
    cut = replace(cfg, out_dir=str(tmp_path / "cut"))
    with pytest.MonkeyPatch.context() as mp:
        interrupt_at(mp, N)
        first = train(cut, shakespeare_20k, progress=False, out=quiet)
    assert first["step"] == N
    second = train(cut, shakespeare_20k, resume=first["checkpoint"], progress=False, out=quiet)
    full, cut = (str(tmp_path / run / "ckpt.safetensors") for run in ("full", "cut"))
    for name, other in ((full, cut), (train_state_path(full), train_state_path(cut))):
        expected, _ = read_safetensors(name)
        got, _ = read_safetensors(other)
        for key in expected:
            assert np.array_equal(got[key], expected[key]), f"{name}: {key}"
    assert second["val_loss"] == whole["val_loss"]

    def losses(run):
        with open(tmp_path / run / "metrics.jsonl") as f:
            return [json.loads(line).get("train_loss") for line in f]

    assert losses("cut") == losses("full")
    one = train(replace(cfg, workers=1, dropout=0.0, out_dir=str(tmp_path / "one")),
                shakespeare_20k, progress=False, out=quiet)
    two = train(replace(cfg, dropout=0.0, out_dir=str(tmp_path / "two")), shakespeare_20k,
                progress=False, out=quiet)
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-4  # the same math, summed in parts
