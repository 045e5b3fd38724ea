"""``isoflop bench``: training-step throughput of each objective (``isoflop bench --size small``).

Times the real training step (``compute`` + backward + AdamW) on random full-length batches, after
warm-up, and prints tokens/s, ms/step and achieved FLOP/s (``actual`` convention, i.e. what the step
multiplies). Speed lives here, not in tests. On CUDA it synchronises only around the timed block.
"""

from __future__ import annotations

import argparse
import time

import torch


def random_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A full-length packed batch: [CLS] A [SEP] B [SEP], words of one piece each."""
    ids = torch.randint(10, vocab, (batch, seq), device=device)
    special = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    special[:, 0] = special[:, seq // 2] = special[:, -1] = True
    ids[special] = 3
    positions = torch.arange(seq, device=device).expand(batch, seq)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        "token_type_ids": (positions > seq // 2).long(),
        "special_tokens_mask": special,
        "word_ids": torch.where(special, -1, positions),
    }


def bench(name: str, size: str, batch: int, seq: int, vocab: int, steps: int, device: torch.device,
          dtype: torch.dtype | None) -> dict:
    from objectives import resolve

    torch.manual_seed(0)
    model = resolve(name)(size=size, vocab_size=vocab, max_position_embeddings=max(512, seq))
    model.configure_model()
    model = model.to(device)
    model.mask_token_id.fill_(4)  # any id outside the data's [10, vocab) range
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = random_batch(batch, seq, vocab, device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.compute(data, None)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, kernels
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    flops = model.flops_per_batch(batch, seq, "actual")
    return {"objective": name, "ms_per_step": 1000 * seconds, "tokens_per_s": batch * seq / seconds,
            "tflops_per_s": flops / seconds / 1e12, "gflops_per_step": flops / 1e9}


def main(argv: list[str] | None = None) -> int:
    from objectives import discover

    parser = argparse.ArgumentParser(prog="isoflop bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", help="encoder size preset (tiny, small, base, large)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--objectives", nargs="*", default=list(discover()), help="objective class names")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else None
    print(f"device {device}, size {args.size}, batch {args.batch} x seq {args.seq}, vocab {args.vocab}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.steps} timed steps, torch threads {torch.get_num_threads()}")
    print(f"{'objective':<24}{'ms/step':>10}{'tokens/s':>12}{'GFLOP/step':>12}{'TFLOP/s':>10}")
    for name in args.objectives:
        r = bench(name, args.size, args.batch, args.seq, args.vocab, args.steps, device, dtype)
        print(f"{r['objective']:<24}{r['ms_per_step']:>10.1f}{r['tokens_per_s']:>12.0f}"
              f"{r['gflops_per_step']:>12.2f}{r['tflops_per_s']:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
