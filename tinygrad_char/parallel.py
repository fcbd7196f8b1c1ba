"""Data parallelism on the CPU: the batch split over processes, one core each.

Retired from the training loop: `mpiexec -n N` (distributed.py) splits each batch the
same way and measured as fast or faster on 2 cores (docs/scaling.md), so `--workers N` is
now a one-line error pointing there. This module remains only for the `numpy-dp`
implementations of benchmarks/bench_train_step.py and goes when they do.

NumPy runs each ufunc on one core, and Python threads cannot share the interpreter's lock
finely enough to run the many small array passes of a step side by side (measured here:
two threads, each on half a batch, made the tiny-cpu step slower, 48 -> 52 ms). Processes
do not share that lock. With `workers` processes (the calling one included), each with
one BLAS thread:

    the parameters live in shared memory, one copy that every process reads;
    process r runs forward and backward on its rows of the batch (np.array_split) and
    writes its gradients into its own shared buffer;
    the gradients are averaged, weighted by each share's number of targets, so the result
    is the full batch's mean-loss gradient (up to float rounding): each share's weight
    multiplies its loss gradient (the backward is linear in it), and the caller adds the
    workers' buffers to its own; it then clips and steps AdamW on the shared parameters
    as usual.

Each share's dropout masks come from (step seed, rank): a run repeats exactly for the same
number of workers, and resumes exactly. NumPy backend only; the GPU needs none of this.
Not here: gradient all-reduce between machines, or overlapping communication (there is
none to overlap: the buffers are shared).
"""

import multiprocessing as mp
from multiprocessing import shared_memory

import numpy as np

from .backend import BackendError
from .distributed import share_seed  # noqa: F401 (the same seeds as the MPI ranks)




class SharedArrays:
    """A dict of NumPy arrays laid out back to back in one block of shared memory.

    `layout` is [(name, shape, dtype)]; `name` (the block's) None creates a new block, a
    string attaches to an existing one. `arrays[name]` are views into the block.
    """

    def __init__(self, layout, block=None):
        sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in layout]
        create = block is None
        self.shm = shared_memory.SharedMemory(name=block, create=create,
                                              size=max(sum(sizes), 1))
        self.arrays, offset = {}, 0
        for (name, shape, dtype), size in zip(layout, sizes):
            self.arrays[name] = np.ndarray(shape, dtype=dtype, buffer=self.shm.buf,
                                           offset=offset)
            offset += size

    def close(self, unlink=False):
        self.arrays = {}
        self.shm.close()
        if unlink:
            self.shm.unlink()


def _worker(rank, config, param_layout, param_block, grad_block, dtype, compute_dtype, conn):
    """A worker process: rebuild the model on the shared parameters, then serve steps."""
    import signal

    from threadpoolctl import threadpool_limits

    from .model import GPT

    # Ctrl-C in a terminal reaches every process of the group: the caller's handler saves a
    # checkpoint and stops the workers; a worker dying on it would lose the step in flight
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1, user_api="blas")
    params = SharedArrays(param_layout, param_block)
    grads = SharedArrays([(n, s, dtype) for n, s, _ in param_layout], grad_block)
    model = GPT(config, dtype=dtype, compute_dtype=compute_dtype)
    model.params = params.arrays  # the caller's parameters, not copies
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            x, y, seed, loss_scale, training = message
            model.training = training
            model.seed_dropout(seed)
            _, loss = model.forward(x, y)
            for name, g in model.backward(loss_scale=loss_scale).items():  # weighted
                np.copyto(grads.arrays[name], g)
            conn.send(float(loss))
    finally:
        params.close()
        grads.close()
        conn.close()


class DataParallel:
    """Run a GPT's forward and backward on `workers` processes (NumPy only).

        parallel = DataParallel(model, workers=2)   # moves model.params to shared memory
        loss, grads = parallel.forward_backward(x, y, seed)
        ...                                          # clip, AdamW on model.params as usual
        parallel.close()                             # or use it as a context manager

    The arrays of model.params are replaced by shared ones with the same values, in the
    same dict, so an optimizer made on model.params (before or after) updates the shared
    arrays. The caller's process is rank 0 and keeps one BLAS thread while this is open.
    """

    def __init__(self, model, workers):
        if model.backend.name != "numpy":
            raise BackendError("workers > 1 is CPU data parallelism (NumPy); on the GPU "
                               "use --workers 1")
        if workers < 2:
            raise ValueError(f"DataParallel needs workers >= 2, got {workers}")
        from threadpoolctl import threadpool_limits

        self.model, self.workers = model, workers
        layout = [(n, p.shape, p.dtype.str) for n, p in model.params.items()]
        self.params = SharedArrays(layout)
        for name, p in model.params.items():
            np.copyto(self.params.arrays[name], p)
            model.params[name] = self.params.arrays[name]  # same dict: optimizers see it
        grad_layout = [(n, s, model.dtype) for n, s, _ in layout]  # float32 in mixed too
        self.grads = [SharedArrays(grad_layout) for _ in range(workers - 1)]
        self._blas = threadpool_limits(1, user_api="blas")
        context = mp.get_context("spawn")  # a clean interpreter: no forked BLAS threads
        self.conns, self.procs = [], []
        for rank in range(1, workers):
            here, there = context.Pipe()
            proc = context.Process(
                target=_worker, daemon=True,
                args=(rank, model.config, layout, self.params.shm.name,
                      self.grads[rank - 1].shm.name, model.dtype, model.compute_dtype,
                      there))
            proc.start()
            there.close()
            self.conns.append(here)
            self.procs.append(proc)

    def forward_backward(self, x, y, seed, loss_scale=1.0):
        """Loss (a float) and gradients of the whole batch (x, y: (B, T), B >= workers).

        Each process takes rows np.array_split(range(B), workers)[rank]; the gradients are
        averaged with weights n_r / n (n_r the share's targets other than -1), which is the
        gradient of the batch's mean loss. dropout seed of share r: share_seed(seed, r).
        """
        if len(x) < self.workers:
            raise ValueError(f"batch of {len(x)} rows for {self.workers} workers: use "
                             "--batch-size >= --workers")
        rows = np.array_split(np.arange(len(x)), self.workers)
        counts = [max(int((y[r] != -1).sum()), 1) for r in rows]
        weights = [c / sum(counts) for c in counts]  # Python floats: no float64 arrays
        training = self.model.training
        for rank, conn in enumerate(self.conns, start=1):  # share r's gradient, times w_r
            r = rows[rank]
            conn.send((x[r], y[r], share_seed(seed, rank), loss_scale * weights[rank],
                       training))
        self.model.seed_dropout(share_seed(seed, 0))
        _, loss = self.model.forward(x[rows[0]], y[rows[0]])
        grads = self.model.backward(loss_scale=loss_scale * weights[0])
        grads = {name: g.astype(self.model.dtype, copy=False)  # float16 ones widened
                 for name, g in grads.items()}
        total = float(loss) * weights[0]
        for rank, conn in enumerate(self.conns, start=1):
            total += conn.recv() * weights[rank]
            for name, g in self.grads[rank - 1].arrays.items():
                grads[name] += g
        return total, grads

    def close(self):
        """Stop the workers and free the shared memory (the parameters are copied back
        into ordinary arrays first, so the model stays usable)."""
        if not self.procs:
            return
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)
        for conn in self.conns:
            conn.close()
        for name, p in list(self.model.params.items()):
            self.model.params[name] = p.copy()
        self.params.close(unlink=True)
        for g in self.grads:
            g.close(unlink=True)
        self._blas.restore_original_limits()
        self.procs, self.conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
