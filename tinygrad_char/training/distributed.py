"""Data parallelism for the training loop: one interface, two transports.

Every rank holds the whole model and the same optimizer state. Each step:

    all ranks cut the same global batch (the one a single process would draw for the step)
    rank r trains on its rows, split_rows(B, world_size, K)[r][m] for micro-batch m
    its gradient is weighted n_rm / n (n_rm the micro-batch's targets, n the batch's: its
    rows / B, training windows having no ignored targets), so the sum over ranks and
    micro-batches is the gradient of the whole batch's mean loss
    the sums meet in an all-reduce; every rank then clips and steps AdamW identically

The weights need no communication: every rank knows the whole global batch's shape.
Transports (`connect()` picks one):

    SingleProcess  world_size 1: the reductions are the identity (what a plain run uses)
    MPIWorld       the program runs under mpiexec / srun (PMI_SIZE, OMPI_COMM_WORLD_SIZE,
                   SLURM_NTASKS...): mpi4py, imported only then. The gradient all-reduce
                   overlaps the backward: as soon as block i's gradients are final
                   (GPT.backward's layer_done hook) they are packed into one bucket and sent
                   with a non-blocking Iallreduce while blocks i-1 ... 0 run their backward;
                   the embeddings, ln_f and two scalars (the weighted loss and the Ctrl-C
                   flag, so every rank stops after the same step) form the last bucket.
                   CuPy arrays go through host buffers, or straight to MPI as device
                   buffers with TINYGRAD_CHAR_CUDA_AWARE_MPI=1 (a CUDA-aware MPI); NCCL
                   between GPUs is not written: docs/scaling.md has the slot it would fill.

Why every rank steps rather than rank 0 stepping and broadcasting: AdamW on every rank
costs a few elementwise passes over the parameters (0.3-1.5 ms measured for the CPU
preset, about 1% of its step), while a broadcast would add a second full-size message per
step to the network (docs/scaling.md); a sum all-reduce
gives every rank bit-identical gradients (IEEE addition is commutative; MPI reduces each
element in one order), so the ranks stay identical, which `check_in_sync` verifies at every
evaluation.

Not here: the training step itself (train.py). (`--workers`, shared-memory processes on one
machine, is retired in favour of `mpiexec -n N`, which measured within a few percent of it:
docs/scaling.md.)
"""

import atexit
import hashlib
import json
import os
import socket
import sys
import time

import numpy as np

from tinygrad_char import runtime
from tinygrad_char.training import rank_watch
from tinygrad_char.model import ConfigError

# the variables an MPI launcher sets in each rank's environment: world size, then rank
LAUNCHER_ENV = [("PMI_SIZE", "PMI_RANK"),  # MPICH / Intel MPI (hydra)
                ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
                ("SLURM_NTASKS", "SLURM_PROCID")]  # srun (inside a step: SLURM_STEP_ID set)


def launched_world():
    """(world_size, rank) from the launcher's environment, or (1, 0) outside one.
    TINYGRAD_CHAR_MPI=0 forces one process."""
    if os.environ.get("TINYGRAD_CHAR_MPI", "1") == "0":
        return 1, 0
    for size_var, rank_var in LAUNCHER_ENV:
        if size_var.startswith("SLURM") and "SLURM_STEP_ID" not in os.environ:
            continue  # an sbatch script itself (one process) sees SLURM_NTASKS too
        try:
            size, rank = int(os.environ[size_var]), int(os.environ.get(rank_var, "0"))
        except (KeyError, ValueError):
            continue
        if size > 1:
            return size, rank
    return 1, 0


def share_seed(seed, share):
    """The dropout seed of share `share` (rank * grad_accum + micro-batch) of a step whose
    seed is `seed`: every share draws its own masks, the same ones on every run."""
    return int(np.random.SeedSequence([seed, share]).generate_state(1)[0])


def split_rows(batch_size, world_size, grad_accum):
    """Row indices of the global batch per rank and micro-batch: [rank][m] -> (b,) ints.
    Rank r takes np.array_split(range(B), world_size)[r], cut again into grad_accum pieces."""
    if batch_size < world_size * grad_accum:
        raise ConfigError(f"--batch-size {batch_size} is smaller than the ranks ({world_size}) "
                          f"times --grad-accum ({grad_accum}): every micro-batch needs a row; "
                          "use a larger --batch-size")
    return [np.array_split(rows, grad_accum)
            for rows in np.array_split(np.arange(batch_size), world_size)]


def code_fingerprint():
    """A hash of this package's source files (subpackages included): ranks must run the
    same code."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tinygrad_char/
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(here)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith((".py", ".cu"))):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, here).encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


class SingleProcess:
    """One process: every reduction is the identity. The interface every transport has."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self):
        # set by the training loop's Ctrl-C handler; sent with the step's last bucket
        self.stop_requested = False

    def grad_reducer(self, param_names, n_layer):
        """The object that sums one step's gradients: hook(last) for GPT.backward's
        layer_done, add(grads, last, loss, stop) per micro-batch."""
        return _LocalReducer()

    def allreduce_sum(self, values):
        """Sum of `values` (a float or a 1-d float64 array) over the ranks."""
        return values

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def check_in_sync(self, params):
        pass

    def check_same_run(self, fingerprint):
        pass

    def note_saved(self, path):
        """Rank 0 saved a checkpoint at `path` (the rank watcher names it if a rank dies)."""

    def abort(self, code):
        pass

    def use_local_gpu(self):
        pass

    def describe(self):
        return "one process"

    def close(self):
        pass


class _LocalReducer:
    """Gradient accumulation in one process: micro-batch gradients summed, then returned."""

    def __init__(self):
        self.acc = None

    def hook(self, last):
        return None  # nothing to overlap

    def add(self, grads, last, loss, stop):
        """Add one micro-batch's `grads` (already weighted); `last` marks the step's last
        micro-batch. Returns (grads, loss, stop) for the last one, None before."""
        if self.acc is None:
            self.acc = grads
        else:
            for name, g in grads.items():
                self.acc[name] += g
        if not last:
            return None
        return self.acc, loss, stop


class MPIWorld(SingleProcess):
    """The ranks of an MPI job (mpi4py's COMM_WORLD)."""

    def __init__(self):
        super().__init__()
        try:
            from mpi4py import MPI
        except ImportError:
            size, _ = launched_world()
            raise ConfigError(f"this program runs under an MPI launcher ({size} ranks) but "
                              "mpi4py is not installed: pip install 'tinygrad-char[mpi]' (or "
                              "run without mpiexec)") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_main = self.rank == 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.table = self.comm.allgather((self.host, self.pid))
        self.watcher = self._start_watcher()
        # the ranks on this node (shared memory): a GPU each, and the cores shared out
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        # the ranks on one machine share its cores out (one thread each on 2 cores, 2 ranks):
        # the kernels' pool, or BLAS without numba (runtime.set_threads)
        threads = max(min(runtime.cores(), (os.cpu_count() or 1) // self.local_size), 1)
        runtime.set_threads(threads)
        # CuPy gradients: handed to MPI as device buffers only when the user says the MPI
        # library is CUDA-aware (no MPI call reports it portably); else through host copies
        self.cuda_aware = os.environ.get("TINYGRAD_CHAR_CUDA_AWARE_MPI", "0") == "1"
        # overlap: start each block's all-reduce during the backward (False: all buckets
        # after it; benchmarks/bench_scaling.py compares the two)
        self.overlap = True
        self.comm_time = 0.0  # seconds spent inside MPI for gradients (benchmarks read it)
        self.collectives = 0  # blocking collectives entered since start-up (see waiting)

    def _start_watcher(self):
        """Rank 0 starts the rank watcher (rank_watch.py: one line naming a rank that
        dies) and every rank connects to it; a rank that cannot is left unwatched, and
        rank 0 says so. Returns the watcher's process on rank 0, else None (and None
        when this process has set one up already)."""
        if not rank_watch.set_up_once():
            return None
        try:
            hang = rank_watch.hang_seconds()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        proc, port = rank_watch.start(self.world_size, hang) if self.is_main else (None, None)
        port, why = self.comm.bcast((port, None) if proc or not self.is_main else
                                    (None, f"the watcher {port}"), root=0)
        if why is None:
            host0 = self.table[0][0]
            why = rank_watch.connect("127.0.0.1" if host0 == self.host else host0, port,
                                     self.rank, self.pid, self.host, hang)
        problems = [p for p in self.comm.gather(why, root=0) or [] if p]
        if self.is_main and problems:
            print(f"note: ranks unwatched: {problems[0]}; a rank that dies is then named only "
                  "by mpiexec's report (its PID: see the ranks' pids above)", file=sys.stderr,
                  flush=True)
        atexit.register(rank_watch.say, "done")
        return proc

    def note_saved(self, path):
        if self.is_main:
            rank_watch.say(f"saved {path}")

    def waiting(self):
        """Called before every blocking collective after start-up: the ranks enter the same
        collectives in the same order, so the k-th is the same one on every rank, and the
        rank watcher names a rank that the others have waited for too long in one."""
        self.collectives += 1
        rank_watch.say(f"wait {self.collectives}")

    def use_local_gpu(self):
        """Make GPU (local rank mod GPUs on this node) current, when CuPy imports: ranks on
        one node must not share a GPU. (Written for CuPy; not run on a GPU yet.)"""
        try:
            import cupy
        except ImportError:
            return
        count = cupy.cuda.runtime.getDeviceCount()
        if count:
            cupy.cuda.Device(self.local_rank % count).use()

    def describe(self):
        ranks = ", ".join(f"rank {r} pid {pid} on {host}"
                          for r, (host, pid) in enumerate(self.table))
        return f"{self.world_size} MPI ranks ({ranks})"

    def grad_reducer(self, param_names, n_layer):
        return _MPIReducer(self, param_names, n_layer)

    def allreduce_sum(self, values):
        buf = np.array(values, dtype=np.float64).reshape(-1)
        self.waiting()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return float(buf[0]) if np.ndim(values) == 0 else buf

    def allgather(self, obj):
        self.waiting()
        return self.comm.allgather(obj)

    def barrier(self):
        self.waiting()
        self.comm.Barrier()

    def check_same_run(self, fingerprint):
        """Refuse to start unless every rank has rank 0's fingerprint (a dict: code hash,
        config, data summary). One line from rank 0 names the first rank and what differs."""
        everyone = self.comm.allgather(fingerprint)
        for r, other in enumerate(everyone):
            diff = [k for k in fingerprint if other.get(k) != everyone[0].get(k)]
            if not diff:
                continue
            if "code" in diff:
                what = ("runs other code (the tinygrad_char sources differ): install the same "
                        "version on every node")
            elif "config" in diff:
                a, b = everyone[0]["config"], other["config"]
                fields = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                          if a.get(k) != b.get(k)}
                what = (f"has another config, (rank 0, rank {r}): {fields}: give every rank "
                        "the same flags")
            else:
                what = (f"has other {', '.join(diff)} ({everyone[0][diff[0]]} on rank 0, "
                        f"{other[diff[0]]} on rank {r}): give every rank the same data and "
                        "--resume checkpoint")
            if self.is_main:  # one line, then every rank leaves together (status 2)
                print(f"error: rank {r} {what}; refusing to start", file=sys.stderr,
                      flush=True)
            self.comm.Barrier()
            raise SystemExit(2)

    def check_in_sync(self, params):
        """Every rank's parameters must be bit-identical (they step identically): compare a
        hash of their bytes across the ranks; a difference is a bug, stop loudly."""
        h = hashlib.sha256()
        for name in sorted(params):
            h.update(_host(params[name]).tobytes())
        self.waiting()
        digests = self.comm.allgather(h.hexdigest())
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' parameters have drifted apart ({digests}): the "
                               "all-reduce did not give every rank the same gradients")

    def abort(self, code):
        """End every rank of the job now (a rank that leaves on its own would leave the
        others waiting in a collective forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        rank_watch.say("abort")  # this rank's own line said why: the watcher keeps quiet
        self.comm.Abort(code)


def _on_gpu(a):
    return type(a).__module__.startswith("cupy")


def _host(a):
    return a.get() if _on_gpu(a) else np.asarray(a)


class _MPIReducer:
    """The gradient all-reduce of one step, in buckets that overlap the backward.

    Micro-batches before the last are summed locally. During the last one's backward,
    `layer_done(i, grads)` (GPT.backward's hook) adds the earlier micro-batches' sums to
    block i's gradients, packs them into one contiguous buffer and starts an Iallreduce on
    it, then lets MPI progress the buckets already in flight (MPI moves data only inside
    its calls unless it has a progress thread). `add(..., last=True)` sends the rest (the
    embeddings, ln_f, the weighted loss and the stop flag), waits for every bucket and
    unpacks the sums as views of the received buffers.
    """

    def __init__(self, world, param_names, n_layer):
        self.world, self.MPI = world, world.MPI
        self.names = list(param_names)
        self.layer_names = {i: [n for n in self.names if n.startswith(f"transformer.h.{i}.")]
                            for i in range(n_layer)}
        self.acc = None
        self.pending = []  # (request, host buffer, [(name, shape)], device buffer or None)
        self.sent = set()

    def _send(self, grads, names, loss=None, stop=False):
        """Pack `names`' gradients (and, for the last bucket, the weighted loss and the
        stop flag) into one buffer and start its all-reduce."""
        arrays = [grads[n] for n in names]
        xp = sys.modules.get("cupy") if arrays and type(arrays[0]).__module__.startswith(
            "cupy") else np
        # float16 gradients (mixed precision) are summed in float32, as AdamW uses them
        dtype = np.result_type(*[a.dtype for a in arrays], np.float32)
        flat = [a.reshape(-1).astype(dtype, copy=False) for a in arrays]
        if loss is not None:
            # the loss joins the bucket where it is (a device scalar on CuPy: no read of its
            # own), the flag is written there by a fill (no upload)
            flat += [xp.asarray(loss, dtype=dtype).reshape(1),
                     xp.full(1, 1.0 if stop else 0.0, dtype=dtype)]
        buf = xp.concatenate(flat) if flat else xp.zeros(0, dtype)
        if xp is not np and self.world.cuda_aware:
            xp.cuda.get_current_stream().synchronize()  # complete before MPI reads it
            host = buf  # a CUDA-aware MPI reads and writes the device buffer itself
        else:
            # The one device -> host copy per bucket that stays: MPI here sums host memory,
            # so each bucket must be on the host before its Iallreduce starts, which waits
            # for the backward that produced it (the copy back after Waitall is the other
            # direction). Only a CUDA-aware MPI or NCCL, reading device memory, removes it.
            host = _host(buf)
        request = self.world.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        self.pending.append((request, host, [(n, grads[n].shape) for n in names],
                             xp if xp is not np else None))
        self.sent.update(names)

    def _layer_done(self, i, grads):
        names = self.layer_names[i]
        if self.acc is not None:
            for n in names:
                grads[n] = grads[n] + self.acc[n]
        self._send(grads, names)
        t = time.perf_counter()
        self.MPI.Request.Testall([p[0] for p in self.pending])  # progress what is in flight
        self.world.comm_time += time.perf_counter() - t

    def hook(self, last):
        """The layer_done callback for the backward of a micro-batch (None before the last)."""
        return self._layer_done if last and self.world.overlap else None

    def add(self, grads, last, loss, stop):
        if not last:
            if self.acc is None:
                self.acc = grads
            else:
                for n, g in grads.items():
                    self.acc[n] += g
            return None
        rest = [n for n in self.names if n not in self.sent]
        if self.acc is not None:
            for n in rest:
                grads[n] = grads[n] + self.acc[n]
        self._send(grads, rest, loss=loss, stop=stop)
        self.world.waiting()
        t = time.perf_counter()
        self.MPI.Request.Waitall([p[0] for p in self.pending])
        self.world.comm_time += time.perf_counter() - t
        out = {}
        for _, host, layout, xp in self.pending:
            buf = host if xp is None else xp.asarray(host)
            offset = 0
            for name, shape in layout:
                size = int(np.prod(shape))
                out[name] = buf[offset:offset + size].reshape(shape)
                offset += size
            if offset < buf.size:  # the last bucket's two scalars, summed over the ranks
                if not _on_gpu(host):  # a host buffer: reading it costs nothing
                    loss, stop = float(host[offset]), bool(host[offset + 1] > 0)
                else:  # a CUDA-aware MPI's device buffer: the loss stays there for the
                    # log step to read; the stop flag must reach the host every step
                    loss = buf[offset:offset + 1].reshape(())  # a 0-d device array
                    stop = bool(buf[offset + 1:offset + 2].get()[0] > 0)
        self.pending = []
        return {n: out[n] for n in self.names}, loss, stop


def connect():
    """The transport for this process: MPIWorld under an MPI launcher with more than one
    rank, else SingleProcess."""
    size, _ = launched_world()
    if size > 1:
        world = MPIWorld()
        if world.world_size > 1:
            return world
        world.close()
    return SingleProcess()


def run_fingerprint(cfg_dict, data, resume):
    """What every rank must agree on before training: code, config, data, checkpoint."""
    ids = np.ascontiguousarray(data.train_ids)
    ids_hash = hashlib.sha256(ids.tobytes()).hexdigest()[:12]
    vocab_hash = hashlib.sha256(json.dumps(data.tokenizer.chars).encode()).hexdigest()[:12]
    return {"code": code_fingerprint(), "config": dict(cfg_dict),
            "data": f"{len(ids)} training ids, sha256 {ids_hash}, vocabulary {vocab_hash}",
            "resume": str(resume)}


OTHER_RANK_DELAY = 2.0  # seconds a rank other than 0 waits before reporting a bad input
FORWARD_DELAY = 0.5  # seconds rank 0 gives the launcher to pass its line on before aborting


def report_once(line):
    """Print one error line on stderr for a job of ranks (the caller then exits with 2).

    Under an MPI launcher every rank parses the same flags and meets the same bad input:
    rank 0 prints the line and ends the whole job at once (MPI_Abort, status 2), while
    another rank first waits OTHER_RANK_DELAY, so the line is printed once; a bad input
    met by that rank alone is still reported, a moment later (and run_ranks then ends the
    job)."""
    size, rank = launched_world()
    if size == 1:
        print(line, file=sys.stderr)
        return
    try:
        from mpi4py import MPI  # initialises MPI: every rank must, before rank 0 can abort
    except ImportError:  # a launcher without mpi4py: each rank reports for itself
        print(line, file=sys.stderr)
        return
    if rank == 0:
        print(line, file=sys.stderr)
        sys.stderr.flush()
        time.sleep(FORWARD_DELAY)  # the launcher forwards the line before the abort ends it
        rank_watch.say("abort")  # the rank watcher (when one runs) keeps quiet
        MPI.COMM_WORLD.Abort(2)
    time.sleep(OTHER_RANK_DELAY)
    print(line, file=sys.stderr)


def run_ranks(run_cli, main, argv=None):
    """`run_cli(main, argv)` (cli.run_cli: an exit status; argv None: sys.argv[1:]) so that, under an MPI launcher, a bad
    input is reported once (report_once) and a rank that fails alone ends the whole job:
    an exception, or a status other than 0 and 130 (an agreed Ctrl-C), aborts every rank
    (the others would otherwise wait for it in a collective forever). SystemExit passes
    through: the ranks agreed to stop (check_same_run). Outside a launcher this is just
    run_cli(main, argv)."""
    size, _ = launched_world()
    if size == 1:
        return run_cli(main, argv)
    try:
        code = run_cli(main, argv, report=report_once)
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    if code not in (0, None, 130):
        from mpi4py import MPI

        sys.stdout.flush()
        sys.stderr.flush()
        rank_watch.say("abort")
        MPI.COMM_WORLD.Abort(code if isinstance(code, int) else 1)
    return code
