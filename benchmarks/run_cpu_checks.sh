#!/usr/bin/env bash
# Every CPU measurement the README reports, in one command, on a quiet machine:
#
#   DATA=/path/to/data bash benchmarks/run_cpu_checks.sh [step|layers|nanogpt|wikitext|rest]...
#
# DATA holds wikitext-2-raw/ (wiki.valid.raw, wiki.test.raw; wiki.train.raw too if you have it)
# and tinyshakespeare/input.txt. With no arguments every part runs, in the order above.
# OpenBLAS's CPU-type overrides are unset for these commands only (they slow a current
# NumPy's float32 matmul); every part sets its thread counts (2: this project's machine).
# Logs and figures go to benchmarks/results/ (runs write their checkpoints under runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder holding wikitext-2-raw/ and tinyshakespeare/}"
R=benchmarks/results
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS NUMBA_NUM_THREADS=$THREADS
B=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
WT=(--data-dir "$DATA/wikitext-2-raw" --train-split validation)
SHAKESPEARE="$DATA/tinyshakespeare/input.txt"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(step layers nanogpt wikitext rest)

timed() {  # timed LOG CMD...: run CMD, its output and wall time into LOG
  local log=$1; shift
  mkdir -p "$(dirname "$log")"
  local t0=$SECONDS
  "$@" 2>&1 | tr '\r' '\n' | grep -v -E '[0-9]+/[0-9]+ \[' > "$log" || true
  echo "wall_seconds $((SECONDS - t0))" >> "$log"
  tail -n 4 "$log"
}

for part in "${parts[@]}"; do
  case $part in
    step)  # one training step: xp ops, numba kernels, PyTorch eager; three sittings
      for _ in 1 2 3; do
        "${B[@]}" python benchmarks/bench_train_step.py --configs tiny-cpu,cpu-preset \
          --impls numpy,numpy-cpu,torch --threads "$THREADS" --repeat 20
      done
      "${B[@]}" python benchmarks/bench_train_step.py --configs tiny-cpu --profile --threads "$THREADS"
      ;;
    layers)
      "${B[@]}" python benchmarks/bench_layers.py --threads "$THREADS"
      "${B[@]}" python benchmarks/lab_cpu_threads.py  # sets 2 threads in each arrangement
      ;;
    nanogpt)  # nanoGPT's CPU recipe on Tiny Shakespeare, ours then PyTorch's
      timed $R/nanogpt_cpu_shakespeare.log "${B[@]}" python examples/train_text.py \
        --text "$SHAKESPEARE" --preset nanogpt_cpu --out-dir runs/nanogpt_cpu
      timed $R/nanogpt_cpu_shakespeare_llama.log "${B[@]}" python examples/train_text.py \
        --text "$SHAKESPEARE" --preset nanogpt_cpu --pos-encoding rope \
        --normalization rmsnorm --activation swiglu --n-kv-head 2 --mlp-ratio 3 \
        --out-dir runs/nanogpt_cpu_llama
      timed $R/nanogpt_cpu_shakespeare_torch.log "${B[@]}" python benchmarks/train_torch.py \
        --text "$SHAKESPEARE" --preset nanogpt_cpu --threads "$THREADS"
      ;;
    wikitext)  # the CPU preset and llama_cpu on WikiText-2, one process and two ranks
      timed $R/cpu_preset_run/train.log "${B[@]}" python examples/train_wikitext.py \
        --preset cpu "${WT[@]}" --out-dir runs/cpu_preset
      cp runs/cpu_preset/metrics.jsonl $R/cpu_preset_run/metrics.jsonl
      [ -f runs/cpu_preset/loss.png ] && cp runs/cpu_preset/loss.png $R/cpu_preset_run/loss.png
      timed $R/llama_cpu_run/train.log "${B[@]}" python examples/train_wikitext.py \
        --preset llama_cpu "${WT[@]}" --out-dir runs/llama_cpu
      cp runs/llama_cpu/metrics.jsonl $R/llama_cpu_run/metrics.jsonl
      timed $R/cpu_preset_run/train_mpi2.log "${B[@]}" mpiexec -n 2 python \
        examples/train_wikitext.py --preset cpu "${WT[@]}" --out-dir runs/cpu_preset_mpi2
      timed $R/cpu_preset_run/train_torch.log "${B[@]}" python benchmarks/train_torch.py \
        --preset cpu "${WT[@]}" --threads "$THREADS"
      ;;
    rest)
      "${B[@]}" python benchmarks/bench_scaling.py --steps 30
      "${B[@]}" python benchmarks/bench_checkpoint.py --threads "$THREADS"
      "${B[@]}" python benchmarks/bench_generate.py --threads "$THREADS"
      ;;
    *) echo "unknown part $part (step, layers, nanogpt, wikitext, rest)"; exit 2 ;;
  esac
done
