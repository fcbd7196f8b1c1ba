"""Train the same model with PyTorch, for the same steps, on the same batches: the reference
that our training run is compared against (validation loss within 0.05 nats).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_torch.py \\
        --preset cpu --data-dir $DATA/wikitext-2-raw --train-split validation

Everything that can be shared is: the data and tokenizer (tinygrad_char.training.data), the initial
weights (tinygrad_char.model.init_params, same seed), the batch of each step (the same
per-step seeds as tinygrad_char.training.train), the learning-rate schedule, gradient clipping, and
AdamW with the same rule (only 2-d tensors decay). The model is benchmarks/torch_gpt.py
(scaled_dot_product_attention). Evaluation walks the whole validation and test splits in the
same windows as ours. Dropout masks differ (torch draws its own). Results are appended to
benchmarks/results/train_compare.jsonl.
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (RESULTS, append_jsonl, available_cores,  # noqa: E402
                                limit_threads, machine_info)
from benchmarks.torch_gpt import TorchGPT  # noqa: E402
from tinygrad_char.commands.train import PRESETS  # noqa: E402
from tinygrad_char.training.data import eval_batches, get_batch, prepare_text, prepare_wikitext2  # noqa
from tinygrad_char.model import init_params  # noqa: E402
from tinygrad_char.optim import cosine_lr  # noqa: E402
from tinygrad_char.training.cli import run_cli  # noqa: E402
from tinygrad_char.training.config import build_parser, resolve_config  # noqa: E402
from tinygrad_char.training.train import step_seed  # noqa: E402


@torch.no_grad()
def evaluate(model, ids, block_size, batch_size):
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_batches(ids, block_size, batch_size):
        n = int((y != -1).sum())
        _, loss = model(torch.as_tensor(x), torch.as_tensor(y))
        total += float(loss) * n
        count += n
    model.train()
    return total / count


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], PRESETS)
    parser.add_argument("--data-dir")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--max-lines", type=int)
    parser.add_argument("--text")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    cfg = resolve_config(args, PRESETS)
    limit_threads(cfg.threads or available_cores())  # --threads: TrainConfig's, as ours
    data = prepare_text(args.text) if args.text else \
        prepare_wikitext2(args.data_dir, args.train_split, args.max_lines)
    model_cfg = cfg.model_config(data.tokenizer.vocab_size)
    params = {k: v.astype(np.float32) for k, v in init_params(model_cfg, cfg.seed).items()}
    model = TorchGPT(model_cfg, params, dtype=torch.float32, sdpa=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    model.train()
    start = time.perf_counter()
    for step in range(cfg.max_steps):
        lr = cosine_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = get_batch(data.train_ids, cfg.batch_size, cfg.block_size,
                         np.random.default_rng(step_seed(cfg.seed, step)))
        _, loss = model(torch.as_tensor(x), torch.as_tensor(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_s = time.perf_counter() - start
    val = evaluate(model, data.val_ids, cfg.block_size, cfg.eval_batch_size)
    record = {"impl": "torch", "torch": torch.__version__, "steps": cfg.max_steps,
              "train_seconds": train_s,
              "tokens_per_sec": cfg.max_steps * cfg.batch_size * cfg.block_size / train_s,
              "val_loss": val, "val_bpc": val / math.log(2), "data": data.description,
              "config": vars(cfg)}
    if data.test_ids is not None:
        test = evaluate(model, data.test_ids, cfg.block_size, cfg.eval_batch_size)
        record.update(test_loss=test, test_bpc=test / math.log(2))
    print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=1))
    append_jsonl(Path(args.out) / "train_compare.jsonl", record, machine=machine_info())


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a bad flag is one line "error: ..."
