"""Compile the CPU kernels ahead of their first call, into numba's on-disk cache.

    python -m tinygrad_char.fused.cpu.warm     # every float32 kernel of training, now

A fresh install compiles its kernels on the first training step: 12.6 s on a 2-core AMD
EPYC (kernels/README.md has the figures), and 0.4 s from the cache afterwards. So
`tinygrad_char.runtime.setup` (what the entry points call), with a cold cache and a core to
spare, starts this module in a second process (`runtime.start_compile_ahead`) that compiles
them in the reverse order of a training step (attention, the largest, first; then AdamW
back to the embedding) while training compiles them in step order as it meets them: each
kernel is compiled by whichever process reaches it first and loaded from the cache by the
other (numba replaces cache files atomically, and both compile the same code), so the first
step costs less (12.6 s -> 8.8-10.7 s measured). TINYGRAD_CHAR_COMPILE_AHEAD=0 turns it off;
running this module by hand (an image build, a CI step) leaves nothing to compile.
"""

import os
import sys

import numpy as np


SHAPES = (dict(B=2, T=4, C=8, NH=2, V=5),  # below _jit.SERIAL_BELOW: the serial builds
          dict(B=4, T=64, C=128, NH=2, V=65))  # above it: the parallel builds


def exercises(B, T, C, NH, V):
    """(name, fn) pairs in training-step order; fn calls one op's kernels (forward and
    backward) on float32 inputs of these sizes, with the types training passes them."""
    from tinygrad_char.fused.cpu import kernels
    from tinygrad_char.fused.cpu import rmsnorm, rope, swiglu
    from tinygrad_char.ops.rope import rope_tables

    ops = {name: fn for name, (fn, _) in kernels().items()}
    rng = np.random.default_rng(0)
    f32 = np.float32

    def x():
        return rng.standard_normal((B, T, C)).astype(f32)

    def pair(fwd, bwd, *args):
        out, cache = fwd(*args)
        bwd(np.ones_like(out), cache)

    def cross_entropy():
        logits = rng.standard_normal((B, T, V)).astype(f32)
        loss, cache = ops["cross_entropy_forward"](logits, rng.integers(0, V, (B, T)))
        ops["cross_entropy_backward"](1.0, cache)

    def adamw():
        params = {"w": rng.standard_normal((C, C)).astype(f32), "b": np.zeros(C, f32)}
        opt = ops["AdamW"](params, lr=1e-3)
        opt.step(params, grad_scale=opt.grad_norm(params))  # the norm's kernel too

    ones, zeros = np.ones(C, f32), np.zeros(C, f32)
    W = rng.standard_normal((3 * C, C)).astype(f32)
    table = rng.standard_normal((V, C)).astype(f32)
    return [
        ("embedding", lambda: pair(ops["embedding_forward"], ops["embedding_backward"],
                                   rng.integers(0, V, (B, T)), table)),
        ("position_embedding", lambda: pair(ops["position_embedding_forward"],
                                            ops["position_embedding_backward"], x(), x()[0])),
        ("dropout", lambda: pair(lambda a: ops["dropout_forward"](a, 0.1, rng),
                                 ops["dropout_backward"], x())),
        ("layernorm", lambda: pair(ops["layernorm_forward"], ops["layernorm_backward"], x(),
                                   ones, zeros)),
        ("rmsnorm", lambda: pair(rmsnorm.rmsnorm_forward, rmsnorm.rmsnorm_backward, x(), ones)),
        ("linear", lambda: pair(ops["linear_forward"], ops["linear_backward"], x(), W,
                                W[:, 0].copy())),
        ("rope", lambda: pair(rope.rope_forward, rope.rope_backward,
                              rng.standard_normal((B, T, 3 * C)).astype(f32),
                              *rope_tables(0, T, C // NH, 10000.0, np), NH, NH)),
        ("attention", lambda: pair(lambda a: ops["attention_forward"](a, NH, 0.1, rng, True),
                                   ops["attention_backward"],
                                   rng.standard_normal((B, T, 3 * C)).astype(f32))),
        ("gelu", lambda: pair(ops["gelu_forward"], ops["gelu_backward"], x())),
        ("swiglu", lambda: pair(swiglu.swiglu_forward, swiglu.swiglu_backward, x(), x())),
        ("relu", lambda: pair(ops["relu_forward"], ops["relu_backward"], x())),
        ("cross_entropy", cross_entropy),
        ("adamw", adamw),
        ("sample_from_uniforms", lambda: ops["sample_from_uniforms"](
            rng.standard_normal((B, V)).astype(f32), rng.random((B, 1)), 0.8, 2, 0.9)),
    ]


def compile_all(reverse=False):
    """Run every exercise at both sizes, compiling what the cache lacks. reverse: the
    helper's order, attention first (the largest compile, needed in the middle of the
    forward), then the rest from the step's end (AdamW) back to its start."""
    for shape in reversed(SHAPES) if reverse else SHAPES:
        todo = exercises(**shape)
        if reverse:
            todo = [e for e in todo if e[0] == "attention"] + \
                [e for e in reversed(todo) if e[0] != "attention"]
        for _, fn in todo:
            fn()


def cache_is_warm():
    """True when the cache holds the first and the last kernel a training step meets (the
    rest are compiled together with them, by this module or by a step)."""
    from tinygrad_char.fused.cpu import adamw, embedding

    try:
        return all(os.path.exists(build._cache._cache_file._index_path)
                   for k in (embedding._gather, adamw._adamw)
                   for build in (k.parallel, k.serial))
    except AttributeError:  # another numba's cache internals: assume warm, start nothing
        return True


def main(argv=None):
    import argparse
    import time

    p = argparse.ArgumentParser(description="Compile the CPU kernels into numba's cache.")
    p.add_argument("--reverse", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from tinygrad_char.fused.cpu import numba_available

    if not numba_available():
        print("numba does not import here: there are no CPU kernels to compile")
        return 1
    start = time.perf_counter()
    compile_all(reverse=args.reverse)
    if not args.reverse:
        print(f"CPU kernels compiled into numba's cache in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
