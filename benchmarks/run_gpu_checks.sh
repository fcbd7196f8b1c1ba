#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in one go, with the results written under OUT.
#
#   OUT=/tmp/gpu_results DATA=device_data/wikitext-2-raw bash benchmarks/run_gpu_checks.sh
#
# Runs from the repository root on a machine with CuPy and (for the comparisons) torch:
#   1. the GPU tests: every op and model test on CuPy, each fused kernel against its xp twin;
#   2. the kernel lab: each kernel validated against its twin, then timed (CUDA events);
#   3. per-layer and training-step benchmarks, CuPy (xp and fused) against PyTorch eager and
#      torch.compile on the same GPU, in float32, tf32 and float16 (GPU preset and gpu-large),
#      and attention memory against T (256, 1024, 4096);
#   4. if DATA holds wiki.*.raw, the GPU preset trained to its end (validation split trains),
#      then 1000-step runs in float32, tf32 and float16 for the precisions' accuracy cost.
# Each step's log goes to OUT; a failing step is reported and the next one still runs.
# The package is used from the checkout (PYTHONPATH), so no install is needed.

set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
DATA="${DATA:-}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, report the exit code
    local name=$1
    shift
    echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $?"
    tail -n 3 "$OUT/$name.log"
}

step env python -c "import cupy, numpy, sys; from benchmarks.harness import machine_summary; \
print(machine_summary()); print('cupy', cupy.__version__, 'CUDA runtime', \
cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion())"
step gpu_tests python -m pytest -q -m gpu -p no:cacheprovider
step kernels python benchmarks/kernel_lab/bench_kernels.py --out "$OUT/kernels.jsonl"
step layers python benchmarks/bench_layers.py --sizes tiny,large,gpu --out "$OUT"
step train_step python benchmarks/bench_train_step.py \
    --configs tiny-cpu,gpu-preset,gpu-large --impls cupy,torch-cuda,torch-compile \
    --precisions float32,tf32,float16 --out "$OUT"
step launches python benchmarks/count_launches.py --configs tiny-cpu,gpu-preset \
    --precisions float32,float16 --out "$OUT"
step attention_memory python benchmarks/bench_attention_memory.py \
    --impls cupy,cupy-fused,torch-cuda --out "$OUT"
step generate python benchmarks/bench_generate.py --backend cupy --out "$OUT"
if [ -n "$DATA" ] && [ -f "$DATA/wiki.valid.raw" ]; then
    step gpu_preset python examples/train_wikitext.py --preset gpu --backend cupy \
        --data-dir "$DATA" --train-split validation --out-dir "$OUT/gpu_preset_run" \
        --no-progress
    for dtype in float32 tf32 float16; do
        step "precision_$dtype" python examples/train_wikitext.py --preset gpu --backend cupy \
            --data-dir "$DATA" --train-split validation --max-steps 1000 --dtype "$dtype" \
            --sample-chars 0 --out-dir "$OUT/precision_$dtype" --no-progress
    done
fi
