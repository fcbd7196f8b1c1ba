"""CPU data parallelism (tinygrad_char.parallel, kept for bench_train_step.py's numpy-dp):
the split batch gives the whole batch's loss and gradients, dropout shares are seeded per
rank, and misuse is a clear error; the training loop's --workers is retired (mpiexec -n N
instead, tests/test_distributed.py). Each DataParallel starts a spawned process (~1 s)."""

from dataclasses import replace

import numpy as np
import pytest

from tinygrad_char import GPT
from tinygrad_char.model import ConfigError, GPTConfig
from tinygrad_char.parallel import DataParallel, SharedArrays, share_seed
from tinygrad_char.config import TrainConfig

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


@pytest.mark.parametrize("workers", [0, 2, 5])
def test_workers_is_retired_with_a_pointer_to_mpiexec(workers):
    with pytest.raises(ConfigError, match=(r"workers must be|--workers was replaced by MPI "
                                           r"ranks.*mpiexec -n")):
        TrainConfig(workers=workers).validate()
