"""Data-parallel training (tinygrad_char.training.distributed) on real `mpiexec -n 2` runs over
loopback: two ranks train the same parameters as one process on the same global batches
(float64, 1e-10 relative), --grad-accum equals the unsplit batch, a run resumes exactly on
2 ranks and on 1, rank 0 alone writes the metrics, a killed rank ends the job within
seconds, Ctrl-C on the launcher saves an agreed step, and ranks with another config are
refused. Plus the transport's pieces without MPI (launcher detection, the row split).

Every MPI run is a 1-layer, 16-wide model on 30,000 characters of Tiny Shakespeare (about
2 s each, bounded by a timeout); they are skipped, with the reason, when mpi4py or mpiexec
is missing.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, quiet, sample_text, read_safetensors, tiny_train_config
from tinygrad_char.training.checkpoint import (load_checkpoint, load_training_state,
                                               train_state_path)
from tinygrad_char.training.data import prepare_text
from tinygrad_char.training.distributed import SingleProcess, connect, launched_world, split_rows
from tinygrad_char.model import ConfigError
from tinygrad_char.optim import AdamW
from tinygrad_char.training.train import train

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401

    MPI_MISSING = None if MPIEXEC else "mpiexec is not on PATH (pip install mpich)"
except ImportError:
    MPI_MISSING = "mpi4py is not installed (pip install 'tinygrad-char[mpi]')"
needs_mpi = pytest.mark.skipif(MPI_MISSING is not None, reason=f"needs MPI: {MPI_MISSING}")

SCRIPT = str(REPO / "examples" / "train_text.py")
TIMEOUT = 120  # seconds for one mpiexec run: each takes a few


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "shakespeare_30k.txt"
    path.write_text(sample_text(30_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(text):
    return prepare_text(text, verbose=False)


# the run every test uses: constant learning rate (min_lr = learning_rate, no warm-up) so
# that a run cut at step N and resumed to 2N follows the same schedule as one of 2N steps
BASE = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=6, learning_rate=3e-3,
            min_lr=3e-3, warmup_steps=0, log_interval=1, eval_interval=3, eval_batches=2,
            eval_batch_size=8, sample_chars=0, seed=7, dtype="float64")


def flags(**values):
    args = []
    for key, value in {**BASE, **values}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def mpirun(text, out_dir, n=2, extra=(), timeout=TIMEOUT, **values):
    """Run examples/train_text.py on n ranks; returns the CompletedProcess."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, SCRIPT, "--text", str(text), "--out-dir",
           str(out_dir), "--no-progress", *flags(**values), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env())


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TINYGRAD_CHAR_MPI", None)
    return env


def params_of(out_dir):
    return read_safetensors(os.path.join(out_dir, "ckpt.safetensors"))[0]


def assert_close(got, expected, rel=1e-10, what=""):
    assert sorted(got) == sorted(expected)
    for name in expected:
        scale = max(np.abs(expected[name]).max(), 1e-30)
        err = np.abs(got[name] - expected[name]).max() / scale
        assert err <= rel, f"{what}{name}: relative difference {err:.1e} > {rel:.0e}"


def one_process(data, out_dir, **values):
    cfg = tiny_train_config(out_dir, **{**BASE, **values})
    return train(cfg, data, progress=False, out=quiet, world=SingleProcess())


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# -- without MPI --------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, (1, 0)),
    ({"PMI_SIZE": "4", "PMI_RANK": "2"}, (4, 2)),
    ({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "1"}, (3, 1)),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_STEP_ID": "0"}, (8, 5)),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, (1, 0)),  # an sbatch script: one process
    ({"PMI_SIZE": "1", "PMI_RANK": "0"}, (1, 0)),  # mpiexec -n 1: no MPI needed
    ({"PMI_SIZE": "4", "PMI_RANK": "2", "TINYGRAD_CHAR_MPI": "0"}, (1, 0)),
])
def test_the_launcher_is_detected_from_its_environment(monkeypatch, env, expected):
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_ID", "TINYGRAD_CHAR_MPI"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert launched_world() == expected


def test_outside_a_launcher_one_process_and_no_mpi(monkeypatch):
    monkeypatch.delenv("PMI_SIZE", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    assert type(connect()) is SingleProcess


@pytest.mark.parametrize("story, expected", [
    (["done 0", "done 1"], ""),  # a run that ends: nothing to say
    (["saved 0 runs/x/ckpt.safetensors", "die 1", "die 0"],
     "error: rank 1 of 2 (pid 101 on node1) died without a word (killed by a signal: "
     "SIGKILL, the out-of-memory killer or a crash); the job stops; resume from the last "
     "save with --resume runs/x/ckpt.safetensors"),
    (["die 0", "die 1"], "error: rank 0 of 2 (pid 100 on node0) died without a word (killed "
     "by a signal: SIGKILL, the out-of-memory killer or a crash); the job stops; nothing was "
     "saved yet"),
    (["abort 1", "die 0"], ""),  # rank 1 printed its own error and ended the job
    (["done 1", "die 0"], "error: rank 0 of 2"),
])
def test_the_rank_watcher_names_the_first_rank_to_die(story, expected):
    """The watcher (rank_watch.py, as rank 0 starts it) with two fake ranks on sockets:
    a connection that closes without "done" or "abort" is a rank that died; only the first
    is named, on one line."""
    from tinygrad_char.training import rank_watch

    proc = subprocess.Popen([sys.executable, rank_watch.__file__, "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        conns = []
        for r in range(2):
            conns.append(socket.create_connection(("127.0.0.1", port)))
            conns[r].sendall(f"hello {r} {100 + r} node{r}\n".encode())
        for event in story:
            word, r, *rest = event.split(" ")
            conn = conns[int(r)]
            if word == "die":
                conn.close()
            elif word == "saved":
                conn.sendall(f"saved {rest[0]}\n".encode())
            else:
                conn.sendall(f"{word}\n".encode())
                conn.close()
            time.sleep(0.05)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.splitlines()
    assert len(lines) == (1 if expected else 0) and err.startswith(expected), err


@contextlib.contextmanager
def watched_pair(hang):
    """The watcher (as rank 0 starts it, hang time `hang`) with two fake ranks connected,
    introduced and inside collective 1. Rank 0's pid is a stand-in process (the watcher
    kills rank 0 to end a job). Yields (watcher, [conn0, conn1], stand-in)."""
    from tinygrad_char.training import rank_watch

    rank0 = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = subprocess.Popen([sys.executable, rank_watch.__file__, "2", str(hang)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conns = []
    try:
        port = int(proc.stdout.readline().split()[1])
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        conns[0].sendall(f"hello 0 {rank0.pid} node0\nwait 1\n".encode())
        conns[1].sendall(b"hello 1 101 node1\nwait 1\n")
        yield proc, conns, rank0
    finally:
        for p in (proc, rank0):
            if p.poll() is None:
                p.kill()
        for conn in conns:
            conn.close()


def beat(proc, conns, seconds):
    """Heartbeats from `conns` every 0.1 s for `seconds`, or until the watcher exits."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        for conn in conns:
            conn.sendall(b"beat\n")
        time.sleep(0.1)


def test_the_rank_watcher_names_a_rank_the_others_wait_for_and_ends_the_job():
    """Fake ranks: both enter collective 1, rank 0 then waits in collective 2 and rank 1
    never enters it (both alive: rank 1 is stuck outside MPI): after the hang time the
    watcher names rank 1 and kills rank 0, which is how the launcher then ends the job."""
    with watched_pair(0.5) as (proc, conns, rank0):
        beat(proc, conns, 0.8)  # both in collective 1 past the hang time: nobody is behind
        assert proc.poll() is None, "the watcher stopped while no rank was behind"
        conns[0].sendall(b"wait 2\n")
        beat(proc, conns, 10)
        _, err = proc.communicate(timeout=10)
        assert rank0.wait(timeout=10) == -signal.SIGKILL, "rank 0 was not ended"
    assert err.splitlines() == ["error: rank 1 of 2 (pid 101 on node1) has not joined the "
                                "collective every other rank has waited in for 0.5 s "
                                "(it hangs, or was stopped); ending the job (nothing was saved "
                                "yet; TINYGRAD_CHAR_HANG_SECONDS sets the wait, 0 turns this "
                                "off)"], err


def test_the_rank_watcher_names_a_rank_that_falls_silent():
    """Fake ranks inside the same collective (equal counts): rank 0 keeps beating, rank 1
    falls silent (stopped inside MPI): after the hang time rank 1 is named."""
    with watched_pair(0.6) as (proc, conns, rank0):
        beat(proc, conns[:1], 10)
        _, err = proc.communicate(timeout=10)
        assert rank0.wait(timeout=10) == -signal.SIGKILL, "rank 0 was not ended"
    assert err.startswith("error: rank 1 of 2 (pid 101 on node1) has not been heard from for "
                          "0.6 s (it hangs, or was stopped); ending the job"), err


@pytest.mark.parametrize("text, expected", [(None, 600.0), ("0", 0.0), ("2.5", 2.5),
                                            ("abc", None), ("-1", None), ("inf", None),
                                            ("nan", None), ("", None)])
def test_the_hang_time_is_read_from_the_environment_or_refused(monkeypatch, text, expected):
    from tinygrad_char.training import rank_watch

    if text is None:
        monkeypatch.delenv("TINYGRAD_CHAR_HANG_SECONDS", raising=False)
    else:
        monkeypatch.setenv("TINYGRAD_CHAR_HANG_SECONDS", text)
    if expected is None:
        with pytest.raises(ValueError, match=r"TINYGRAD_CHAR_HANG_SECONDS=.* is not a number "
                                             r"of seconds >= 0: set it to e.g. 600, or 0"):
            rank_watch.hang_seconds()
    else:
        assert rank_watch.hang_seconds() == expected


def test_a_rank_that_cannot_reach_the_watcher_runs_unwatched():
    """connect() to a port nobody listens on returns the reason (rank 0 prints it as a
    note) instead of raising, and say() is then a no-op."""
    from tinygrad_char.training import rank_watch

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again before the connect below
    why = rank_watch.connect("127.0.0.1", port, 3, 1234, "node3")
    assert why is not None and why.startswith(f"rank 3 could not reach it at 127.0.0.1:{port}")
    rank_watch.say("done")  # nothing to send to: no error


def test_rows_split_over_ranks_then_micro_batches():
    rows = split_rows(7, 2, 2)
    assert [[list(m) for m in r] for r in rows] == [[[0, 1], [2, 3]], [[4, 5], [6]]]
    with pytest.raises(ConfigError, match=r"--batch-size 3 is smaller than the ranks \(2\) "
                                          r"times --grad-accum \(2\)"):
        split_rows(3, 2, 2)


class _Rank(SingleProcess):
    """Rank `rank` of a 2-rank world whose all-reduce is left to the test."""
    world_size = 2

    def __init__(self, rank):
        super().__init__()
        self.rank = rank


def test_each_rank_and_micro_batch_draws_its_own_dropout_masks():
    """With dropout, rank r's micro-batch m is seeded share_seed(step seed, r * K + m): the
    ranks' weighted gradients add up to running those shares by hand."""
    from tinygrad_char import GPT, GPTConfig
    from tinygrad_char.training.distributed import share_seed
    from tinygrad_char.training.train import forward_backward

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.3)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (6, 8)), rng.integers(0, 11, (6, 8))
    model = GPT(cfg, dtype="float64", seed=1)
    total = None
    for rank in (0, 1):
        rows = split_rows(6, 2, 2)[rank]
        grads, loss, stop = forward_backward(model, _Rank(rank), x, y, rows, seed=5)
        total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
        assert stop is False
    expected = None
    for share, rows in enumerate([slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6)]):
        model.seed_dropout(share_seed(5, share))
        model.forward(x[rows], y[rows])
        g = model.backward(loss_scale=(rows.stop - rows.start) / 6)
        expected = g if expected is None else {n: expected[n] + v for n, v in g.items()}
    assert_close(total, expected, rel=1e-12)
    assert len({share_seed(5, k) for k in range(4)}) == 4


def test_grad_accum_in_one_process_equals_the_unsplit_batch(data, tmp_path):
    """K = 3 micro-batches of 2 rows, gradients summed, == one batch of 6 (float64)."""
    one_process(data, tmp_path / "whole", max_steps=6)
    one_process(data, tmp_path / "accum", max_steps=6, grad_accum=3)
    assert_close(params_of(tmp_path / "accum"), params_of(tmp_path / "whole"),
                 what="--grad-accum 3: ")
    losses = [[r["train_loss"] for r in metrics(tmp_path / run) if "train_loss" in r]
              for run in ("whole", "accum")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)


# -- mpiexec -n 2 ---------------------------------------------------------------------------

@needs_mpi
@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains(text, data, tmp_path):
    """mpiexec -n 2, and -n 2 with --grad-accum 2: the parameters after 6 steps equal one
    process on the same global batches to 1e-10; rank 0 alone wrote each metrics record,
    and the run recorded world_size 2 in the metrics and in the checkpoint."""
    one_process(data, tmp_path / "one", max_steps=6)
    for run, extra in (("two", {}), ("two_accum", {"grad_accum": 2})):
        done = mpirun(text, tmp_path / run, max_steps=6, **extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert_close(params_of(tmp_path / run), params_of(tmp_path / "one"), what=f"{run}: ")
        records = metrics(tmp_path / run)
        steps = [r["step"] for r in records if not r.get("final")]
        assert steps == [1, 2, 3, 4, 5, 6], "each record once, from rank 0 alone"
        assert sum(1 for r in records if r.get("final")) == 1
        assert all(r["world_size"] == 2 for r in records)
        one = [r["train_loss"] for r in metrics(tmp_path / "one") if "train_loss" in r]
        np.testing.assert_allclose([r["train_loss"] for r in records if "train_loss" in r],
                                   one, rtol=1e-10)
        _, meta = read_safetensors(train_state_path(tmp_path / run / "ckpt.safetensors"))
        assert json.loads(meta["train_state"])["world_size"] == 2
        assert done.stdout.count("validation (whole split") == 1, done.stdout
        assert "error" not in done.stderr and "note" not in done.stderr, done.stderr[-2000:]


@needs_mpi
@pytest.mark.slow
def test_a_two_rank_run_resumes_on_two_ranks_and_on_one(text, data, tmp_path):
    """3 steps on 2 ranks, then on to 6: on 2 ranks bit-identical to 6 uninterrupted steps
    on 2 ranks; on 1 process (the same global batches) equal to 1e-10."""
    for run, steps in (("straight", 6), ("cut", 3)):
        done = mpirun(text, tmp_path / run, max_steps=steps)
        assert done.returncode == 0, done.stderr[-2000:]
    shutil.copytree(tmp_path / "cut", tmp_path / "cut_one")
    ckpt = str(tmp_path / "cut" / "ckpt.safetensors")
    done = mpirun(text, tmp_path / "cut", max_steps=6, extra=["--resume", ckpt])
    assert done.returncode == 0, done.stderr[-2000:]
    straight = params_of(tmp_path / "straight")
    for name, p in params_of(tmp_path / "cut").items():
        assert np.array_equal(p, straight[name]), f"2 ranks -> 2 ranks: {name} differs"

    cfg = tiny_train_config(tmp_path / "cut_one", **{**BASE, "max_steps": 6})
    printed = []
    train(cfg, data, resume=str(tmp_path / "cut_one" / "ckpt.safetensors"), progress=False,
          out=printed.append, world=SingleProcess())
    assert any("saved on 2 rank(s), now 1" in line for line in printed), printed
    assert_close(params_of(tmp_path / "cut_one"), straight, what="2 ranks -> 1: ")


@needs_mpi
@pytest.mark.slow
def test_with_dropout_two_ranks_resume_bit_identically(text, tmp_path):
    """Each rank draws its masks from (step seed, rank): 3 steps + resume to 6 on 2 ranks
    equals 6 uninterrupted steps on 2 ranks bit for bit, moments included."""
    for run, steps in (("straight", 6), ("cut", 3)):
        done = mpirun(text, tmp_path / run, max_steps=steps, dropout=0.2)
        assert done.returncode == 0, done.stderr[-2000:]
    done = mpirun(text, tmp_path / "cut", max_steps=6, dropout=0.2,
                  extra=["--resume", str(tmp_path / "cut" / "ckpt.safetensors")])
    assert done.returncode == 0, done.stderr[-2000:]
    for path in ("ckpt.safetensors", None):
        files = [tmp_path / run / "ckpt.safetensors" for run in ("straight", "cut")]
        if path is None:
            files = [train_state_path(f) for f in files]
        expected, got = (read_safetensors(f)[0] for f in files)
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert np.array_equal(got[name], expected[name]), f"{files[1]}: {name}"
    losses = [[r["train_loss"] for r in metrics(tmp_path / run) if "train_loss" in r]
              for run in ("straight", "cut")]
    assert losses[0] == losses[1]


def long_run_with_a_checkpoint(text, out_dir, rank, **env):
    """Start a long `mpiexec -n 2` run (evaluating and saving every 5 steps) and wait until
    its first checkpoint is on disk. Returns (the launcher's Popen, the pid of `rank`, the
    checkpoint path); the caller ends the run."""
    cmd = [MPIEXEC, "-n", "2", sys.executable, SCRIPT, "--text", str(text), "--out-dir",
           str(out_dir), "--no-progress", *flags(max_steps=10**6, eval_interval=5)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(_env(), **env))
    lines, pid = [], None
    ckpt = out_dir / "ckpt.safetensors"
    deadline = time.monotonic() + 60
    while pid is None or not ckpt.exists():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 60 s: " + "".join(lines))
        if pid is None:
            line = proc.stdout.readline()
            lines.append(line)
            if f"rank {rank} pid " in line:
                pid = int(line.split(f"rank {rank} pid ")[1].split()[0])
        else:
            time.sleep(0.05)
    time.sleep(0.3)
    return proc, pid, ckpt


@needs_mpi
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_the_job_within_seconds(text, tmp_path, victim):
    """SIGKILL a rank mid-run: mpiexec ends every rank in seconds (no hang), non-zero; the
    rank watcher's one line names the dead rank (and no other) and the checkpoint to resume
    from, beside mpiexec's own report (the launcher decides the order of the two, and which
    rank's pid its report names: the first it saw end, not always the killed one); the
    checkpoint on disk still loads and resumes."""
    proc, pid, ckpt = long_run_with_a_checkpoint(text, tmp_path, victim)
    try:
        os.kill(pid, signal.SIGKILL)
        t = time.monotonic()
        rest, _ = proc.communicate(timeout=15)
        assert time.monotonic() - t < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert re.search(r"^=\s+PID \d+ RUNNING AT ", rest, re.M), rest  # mpiexec's report
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert errors == [f"error: rank {victim} of 2 (pid {pid} on {os.uname().nodename}) died "
                      "without a word (killed by a signal: SIGKILL, the out-of-memory killer "
                      f"or a crash); the job stops; resume from the last save with --resume "
                      f"{ckpt}"], rest
    model, _, meta = load_checkpoint(ckpt)
    assert load_training_state(ckpt, AdamW(model.params))["step"] == meta["step"] >= 5


@needs_mpi
def test_a_stopped_rank_is_named_and_the_job_ended(text, tmp_path):
    """SIGSTOP rank 1 mid-run (a hang: its connection stays open, rank 0 waits in the next
    collective, a step's all-reduce or an evaluation's): with TINYGRAD_CHAR_HANG_SECONDS=2
    the watcher names rank 1 in one line and ends the job; the checkpoint on disk loads and
    resumes."""
    proc, pid, ckpt = long_run_with_a_checkpoint(text, tmp_path, 1,
                                                 TINYGRAD_CHAR_HANG_SECONDS="2")
    try:
        os.kill(pid, signal.SIGSTOP)
        t = time.monotonic()
        rest, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # >= 1.5 s: the hang time (2 s) less at most one heartbeat interval (0.5 s)
    assert proc.returncode != 0 and 1.4 <= took < 20, (took, rest)
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    # stopped outside MPI it never enters the next collective; stopped inside one (where the
    # ranks spend most of this tiny model's step) its heartbeats stop
    reasons = ("has not joined the collective every other rank has waited in for 2 s",
               "has not been heard from for 2 s")
    assert len(errors) == 1 and any(errors[0] == (
        f"error: rank 1 of 2 (pid {pid} on {os.uname().nodename}) {reason} (it hangs, or was "
        f"stopped); ending the job (resume from the last save with --resume {ckpt}; "
        "TINYGRAD_CHAR_HANG_SECONDS sets the wait, 0 turns this off)") for reason in reasons), rest
    model, _, meta = load_checkpoint(ckpt)
    assert load_training_state(ckpt, AdamW(model.params))["step"] == meta["step"] >= 5


@needs_mpi
def test_ctrl_c_on_the_launcher_saves_one_agreed_step(text, tmp_path):
    cmd = [MPIEXEC, "-n", "2", sys.executable, SCRIPT, "--text", str(text), "--out-dir",
           str(tmp_path), "--no-progress", *flags(max_steps=10**6, eval_interval=10**5)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env())
    try:
        log = tmp_path / "metrics.jsonl"
        deadline = time.monotonic() + 60
        while not log.exists() or log.stat().st_size < 2000:  # some steps have run
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    saved = [line for line in out.splitlines() if line.startswith("interrupted: saved step")]
    assert len(saved) == 1, out  # rank 0 alone speaks
    step = int(saved[0].split()[3])
    _, _, meta = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert meta["step"] == step
    assert max(r["step"] for r in metrics(tmp_path)) <= step


# A stand-in for CuPy's array type: host memory behind the part of CuPy's interface the
# transport uses (type module "cupy", .get(), cupy.asarray/concatenate/zeros, the stream).
FAKE_CUPY_RANKS = """
import sys, types
import numpy as np

reads = []  # float() of a device value: a read-back that waits for the GPU

class ndarray(np.ndarray):
    def get(self):
        return np.array(self, copy=True)

    def __float__(self):
        reads.append(1)
        return float(np.asarray(self))

ndarray.__module__ = "cupy"
cupy = types.ModuleType("cupy")
cupy.ndarray = ndarray
cupy.asarray = lambda a, dtype=None: np.array(a, dtype=dtype, copy=True).view(ndarray)
cupy.concatenate = lambda arrays: np.concatenate(arrays).view(ndarray)
cupy.zeros = lambda n, dtype: np.zeros(n, dtype).view(ndarray)
cupy.full = lambda n, value, dtype: np.full(n, value, dtype).view(ndarray)
synced = []
stream = types.SimpleNamespace(synchronize=lambda: synced.append(1))
cupy.cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
sys.modules["cupy"] = cupy

from tinygrad_char.training.distributed import MPIWorld
world = MPIWorld()
r = world.rank
shapes = {"transformer.h.0.w": (3, 2), "transformer.h.1.w": (4,), "transformer.wte.weight": (5, 2)}
grads = {n: cupy.asarray(np.full(s, r + 1.0, np.float32) * (i + 1))
         for i, (n, s) in enumerate(shapes.items())}
reducer = world.grad_reducer(list(shapes), n_layer=2)
hook = reducer.hook(True)
hook(1, grads)  # the backward finishes block 1, then block 0
hook(0, grads)
summed, loss, stop = reducer.add(grads, True, cupy.asarray(np.float32(0.5 * (r + 1))), r == 1)
assert not reads, "the loss was read back from the device during the step"
assert isinstance(loss, ndarray) == world.cuda_aware, type(loss)  # else a host float
loss = float(loss)
for i, (n, s) in enumerate(shapes.items()):
    assert type(summed[n]) is ndarray, (n, type(summed[n]))
    assert summed[n].shape == s and np.all(summed[n] == 3.0 * (i + 1)), (n, summed[n])
assert loss == 1.5 and stop is True, (loss, stop)
assert bool(synced) == world.cuda_aware, (synced, world.cuda_aware)
print(f"rank {r} ok, cuda_aware={world.cuda_aware}", flush=True)
"""


@needs_mpi
def test_a_second_world_in_one_process_keeps_the_first_watcher(tmp_path):
    """A process that makes two MPIWorlds (a library user calling train() twice) must not
    drop its first watcher connection: that watcher would report the rank as dead."""
    script = tmp_path / "two_worlds.py"
    script.write_text("import time\n"
                      "from tinygrad_char.training.distributed import MPIWorld\n"
                      "first, second = MPIWorld(), MPIWorld()\n"
                      "second.allreduce_sum(1.0)\n"
                      "time.sleep(0.5)\n"
                      "print(f'rank {first.rank} ok', flush=True)\n")
    env = dict(_env(), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert done.returncode == 0 and "error" not in done.stderr, done.stdout + done.stderr
    assert done.stdout.count(" ok") == 2, done.stdout


@needs_mpi
@pytest.mark.parametrize("cuda_aware", ["0", "1"])
def test_cupy_gradients_are_summed_through_host_or_device_buffers(tmp_path, cuda_aware):
    """The CuPy branch of the all-reduce, under mpiexec -n 2, with a stand-in array type
    (no GPU here): device gradients in three buckets (two blocks during the backward, the
    rest after) come back as device arrays holding the sum over the ranks, with the loss
    and the stop flag; through host copies by default, handed to MPI as they are (after a
    stream synchronise) with TINYGRAD_CHAR_CUDA_AWARE_MPI=1. The loss (a device scalar)
    travels inside the last bucket and is never read back on its own during the step."""
    script = tmp_path / "ranks.py"
    script.write_text(FAKE_CUPY_RANKS)
    env = dict(_env(), TINYGRAD_CHAR_CUDA_AWARE_MPI=cuda_aware,
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    aware = "True" if cuda_aware == "1" else "False"
    for r in (0, 1):  # (the launcher may interleave the two ranks' lines)
        assert done.stdout.count(f"rank {r} ok, cuda_aware={aware}") == 1, done.stdout


@needs_mpi
def test_ranks_with_another_config_are_refused_with_one_line(text, tmp_path):
    common = [sys.executable, SCRIPT, "--text", str(text), "--out-dir", str(tmp_path),
              "--no-progress"]
    cmd = [MPIEXEC, "-n", "1", *common, *flags(max_steps=3), ":",
           "-n", "1", *common, *flags(max_steps=3, seed=8)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("error: rank 1 has another config") and "'seed': (7, 8)" \
        in errors[0] and "refusing to start" in errors[0]
    assert not (tmp_path / "metrics.jsonl").exists()


@needs_mpi
@pytest.mark.slow
def test_bench_scaling_runs_and_writes_its_results(tmp_path):
    """The scaling benchmark with tiny settings (a script, not a test of speed): it writes
    scaling.json with every run, the loopback sweep and the written model's tables."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_scaling.py"), "--config",
           "tiny-cpu", "--steps", "1", "--warmup", "1", "--sizes", "10,12", "--repeat", "1",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert set(result["runs"]) >= {"one_process_1_thread", "mpi_2_ranks"}
    assert [s["bytes"] for s in result["runs"]["mpi_2_ranks"]["allreduce"]] == [1024, 2048,
                                                                                4096]
    model = json.loads((tmp_path / "scaling_model.json").read_text())
    assert {r["config"] for r in model["predictions"]} >= {"cpu-preset", "gpu-preset",
                                                           "gpu-large"}
    assert model["loopback_check"]["measured_2_rank_step_ms"] > 0
    assert "Predicted weak-scaling efficiency" in (tmp_path / "scaling_model.md").read_text()


@needs_mpi
def test_a_rank_that_fails_alone_ends_the_job(text, tmp_path):
    """Rank 1 cannot read its --text file: it prints its one error line and aborts the job
    (without run_ranks, rank 0 would wait for it in the start-up collective forever)."""
    common = [sys.executable, SCRIPT, "--out-dir", str(tmp_path), "--no-progress",
              *flags(max_steps=3)]
    cmd = [MPIEXEC, "-n", "1", *common, "--text", str(text), ":",
           "-n", "1", *common, "--text", str(tmp_path / "missing.txt")]
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert time.monotonic() - t < 60
    assert done.returncode != 0
    assert "missing.txt" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("workers", [0, 2, 5])
def test_workers_is_retired_with_a_pointer_to_mpiexec(workers, tmp_path):
    """--workers N (shared-memory processes on one machine) gave way to mpiexec -n N: the
    same split measured within a few percent of it (benchmarks/results/scaling.md). The
    flag (hidden from --help) and a config file's field are refused with the pointer."""
    from tinygrad_char.training.config import build_parser, load_config_file, resolve_config

    pointer = r"--workers was replaced by MPI ranks.*mpiexec -n"
    with pytest.raises(ConfigError, match=pointer):
        resolve_config(build_parser("t").parse_args(["--workers", str(workers)]))
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"workers": workers}))
    with pytest.raises(ConfigError, match=pointer):
        load_config_file(path)


@needs_mpi
@pytest.mark.parametrize("extra, message", [
    (["--grad-clip", "nan"], "error: config: grad_clip must be a finite number"),
    (["--no-such-flag"], "error: unrecognized arguments: --no-such-flag"),
])
def test_a_bad_flag_on_two_ranks_is_reported_once(text, tmp_path, extra, message):
    """Every rank meets the same bad input: rank 0 reports it and ends the job, so the
    error line appears once (MPICH adds its own line for the abort), no traceback."""
    done = mpirun(text, tmp_path, extra=extra, max_steps=3)
    assert done.returncode != 0, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), done.stderr
    assert "Traceback" not in done.stderr
