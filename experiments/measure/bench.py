"""``isoflop bench``: each objective's training step against the same step written plainly with
transformers' classes, side by side, in one run (``isoflop bench --size small``).

*isoflop*: the real training step as Lightning runs it, less Lightning's own overhead (logging,
callbacks, the non-finite check): ``objective.compute``, backward, gradient clipping, the
objective's own optimiser (``configure_optimizers``: AdamW and its schedule) and ``zero_grad``.

*plain*: the step as users write it by hand, where there is one (:data:`PLAIN_LOOPS`), on the same
batch, sizes and optimiser settings: MaskedLM against ``BertForMaskedLM`` of the encoder's shape;
ReplacedTokenDetection (and Electra15) against an ``ElectraForMaskedLM`` generator sharing the
``ElectraForPreTraining`` discriminator's embeddings, full-vocabulary logits at every position
with labels -100 where nothing is masked, Gumbel sampling at the masked positions, and
``gen loss + 50 x disc loss``. Both mask per batch on the device, as ``DataCollatorForLanguageModeling``
does, and use ``torch.optim.AdamW`` with a linear schedule.

Rounds are interleaved (isoflop, plain, isoflop, plain, ...) after warm-up, so machine noise hits
both sides; each side's figure is the median over rounds. GFLOP/s counts the *objective's* analytic
training FLOPs (``actual`` convention) for both sides, so the ratio of GFLOP/s, like that of tokens/s,
is a speed ratio; each side's own matmul FLOPs per step are printed too. MFU divides by the device's
peak (:func:`experiments.run.throughput.peak_flops`). Speed is measured here, not in tests.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from experiments import errors

WARMUP_STEPS = 2  # steps per side before timing: allocator, kernels, and any compilation


def random_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A full-length packed batch, as training's are (``datamodules.pretraining``: every example fills
    ``max_seq_length``, no padding, so ``padded`` is False and attention runs with no mask): [CLS] A [SEP] B
    [SEP], words of one piece each."""
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
        "padded": False,
    }


@dataclass
class Side:
    """One side of a comparison: a training step to time, and its measurements."""

    label: str
    step: Callable[[], None]
    own_flops: float  # the matmul FLOPs this side's step really runs
    seconds: list[float] = field(default_factory=list)  # per round
    peak_bytes: int = 0


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _finish_step(loss: torch.Tensor, params: list[nn.Parameter], optimizer, scheduler, clip: float) -> None:
    """Backward, clip, step, schedule, zero: the tail every training loop shares."""
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def isoflop_step(model, data: dict, dtype: torch.dtype | None) -> Callable[[], None]:
    """The objective's training step, with its own optimiser and schedule (``configure_optimizers``)."""
    model.scheduled_steps = 1_000_000  # what a budget would set; the schedule needs a length
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip = model.hparams.max_grad_norm

    model.full_metrics = False  # a step that logs nothing, as nearly all training steps are

    def step() -> None:
        with _autocast(model.device, dtype):
            loss = model.training_computation(data)["loss"]
        _finish_step(loss, params, optimizer, scheduler, clip)

    return step


def _plain_optimizer(model, modules: list[nn.Module]):
    """``torch.optim.AdamW`` over every parameter (shared ones once), with the objective's settings and
    transformers' linear warmup schedule: what a hand-written loop uses."""
    from transformers import get_linear_schedule_with_warmup

    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    hp = model.hparams
    optimizer = torch.optim.AdamW(params, lr=model.learning_rate, betas=tuple(hp.adam_betas), eps=hp.adam_eps,
                                  weight_decay=hp.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10_000, 1_000_000)
    return params, optimizer, scheduler


def _plain_mask(ids: torch.Tensor, data: dict, mask_prob: float, mask_id: int, vocab: int, keep: float,
                random: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``DataCollatorForLanguageModeling``'s masking, on the device: Bernoulli(mask_prob) over non-special,
    non-pad tokens; of those, a share ``random`` gets a random token, ``keep`` stays, the rest become
    [MASK]. Returns the inputs, the chosen positions and the labels (-100 where not chosen)."""
    prob = torch.full(ids.shape, mask_prob, device=ids.device)
    prob.masked_fill_(data["special_tokens_mask"].bool() | ~data["attention_mask"].bool(), 0.0)
    chosen = torch.bernoulli(prob).bool()
    u = torch.rand(ids.shape, device=ids.device)
    inputs = ids.masked_fill(chosen & (u < 1 - keep - random), mask_id)
    if random:
        noise = torch.randint(vocab, ids.shape, device=ids.device)
        inputs = torch.where(chosen & (u >= 1 - random), noise, inputs)
    return inputs, chosen, ids.masked_fill(~chosen, -100)


def plain_bert_step(model, data: dict, dtype: torch.dtype | None) -> tuple[Callable[[], None], nn.Module]:
    """``BertForMaskedLM`` of the objective's encoder shape (BERT has no factorised embeddings, so its
    embedding width is the hidden width), full-vocabulary logits, labels -100 where unmasked."""
    from transformers import BertConfig, BertForMaskedLM

    s, hp = model.shape, model.hparams
    config = BertConfig(vocab_size=model.vocab_size, hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
                        num_attention_heads=s.num_heads, intermediate_size=s.intermediate_size,
                        max_position_embeddings=hp.max_position_embeddings, hidden_dropout_prob=hp.dropout,
                        attention_probs_dropout_prob=hp.dropout, type_vocab_size=2, attn_implementation="sdpa")
    bert = BertForMaskedLM(config).to(model.device)
    params, optimizer, scheduler = _plain_optimizer(model, [bert])
    ids, mask_id = data["input_ids"], int(model.mask_token_id)

    def step() -> None:
        inputs, _, labels = _plain_mask(ids, data, model.mask_prob, mask_id, model.vocab_size, keep=0.1, random=0.1)
        with _autocast(ids.device, dtype):
            loss = bert(input_ids=inputs, attention_mask=data["attention_mask"],
                        token_type_ids=data["token_type_ids"], labels=labels).loss
        _finish_step(loss, params, optimizer, scheduler, hp.max_grad_norm)

    return step, bert


def plain_electra_step(model, data: dict, dtype: torch.dtype | None) -> tuple[Callable[[], None], nn.Module]:
    """ELECTRA as users write it: an ``ElectraForMaskedLM`` generator of the paper's width sharing the
    ``ElectraForPreTraining`` discriminator's embeddings, full-vocabulary generator logits everywhere
    (labels -100 where unmasked), Gumbel-max sampling at the masked positions, and
    ``gen loss + disc_weight x disc loss`` (Electra15: the disc loss on the masked positions only)."""
    import torch.nn.functional as F
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from objectives.electra15 import Electra15

    gen = ElectraForMaskedLM(model.encoder_config(model.generator_shape)).to(model.device)
    disc = ElectraForPreTraining(model.encoder_config()).to(model.device)
    gen.electra.embeddings = disc.electra.embeddings
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    pair = nn.ModuleList([gen, disc])
    params, optimizer, scheduler = _plain_optimizer(model, [pair])
    hp, ids, mask_id = model.hparams, data["input_ids"], int(model.mask_token_id)
    masked_only = isinstance(model, Electra15)
    am, tt = data["attention_mask"], data["token_type_ids"]

    def step() -> None:
        inputs, chosen, labels = _plain_mask(ids, data, model.mask_prob, mask_id, model.vocab_size, keep=0.15, random=0)
        with _autocast(ids.device, dtype):
            out = gen(input_ids=inputs, attention_mask=am, token_type_ids=tt, labels=labels)
            with torch.no_grad():
                logits = out.logits[chosen].float()
                noise = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)))
                generated = ids.clone()
                generated[chosen] = (logits + noise).argmax(-1)
            disc_logits = disc(input_ids=generated, attention_mask=am, token_type_ids=tt).logits
            scored = chosen if masked_only else am.bool()
            disc_loss = F.binary_cross_entropy_with_logits(disc_logits[scored].float(),
                                                           (generated != ids)[scored].float())
            loss = out.loss + hp.disc_weight * disc_loss
        _finish_step(loss, params, optimizer, scheduler, hp.max_grad_norm)

    return step, pair


def plain_flops(model, batch: int, seq: int) -> float:
    """The matmul FLOPs of the plain step (``actual`` convention): its MLM head runs on every position,
    and BERT's embedding width is its hidden width."""
    from dataclasses import replace

    from objectives.flops import disc_head_flops, encoder_flops, mlm_head_flops
    from objectives.mlm import MaskedLM

    V = model.vocab_size
    if isinstance(model, MaskedLM):
        bert = replace(model.shape, embedding_size=model.shape.hidden_size)
        return 3 * (encoder_flops(bert, V, seq, "actual", batch) + batch * mlm_head_flops(bert, V, seq, "actual"))
    gen, disc = model.generator_shape, model.shape
    forward = encoder_flops(gen, V, seq, "actual", batch) + batch * mlm_head_flops(gen, V, seq, "actual")
    forward += encoder_flops(disc, V, seq, "actual", batch) + batch * disc_head_flops(disc, seq, "actual")
    return 3 * forward


def plain_loop(model) -> Callable | None:
    """The hand-written counterpart of an objective's step, or None where users have none to write:
    MaskedLM, and ReplacedTokenDetection and Electra15 (not MLMPlusRTD, whose discriminator also
    predicts tokens, nor the objectives without a detector). Subclasses that change the step are
    left out too: the plain loop must do the same job."""
    from objectives.electra15 import Electra15
    from objectives.mlm import MaskedLM
    from objectives.rtd import ReplacedTokenDetection

    if model.family.name != "electra" or getattr(model, "uniform_generator", False):
        return None
    kind = type(model)
    if kind is MaskedLM:
        return plain_bert_step
    if kind in (ReplacedTokenDetection, Electra15) and model.embedding_sharing == "embeddings":
        return plain_electra_step
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    from experiments.run.throughput import reset_peak_rss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak_bytes(device: torch.device) -> int:
    from experiments.run.throughput import peak_rss_bytes

    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()


def time_round(side: Side, steps: int, device: torch.device) -> None:
    """``steps`` steps of one side, timed between device synchronisations, with its peak memory."""
    _synchronize(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(steps):
        side.step()
    _synchronize(device)
    side.seconds.append(time.perf_counter() - start)
    side.peak_bytes = max(side.peak_bytes, _peak_bytes(device))


def build_sides(name: str, args, device: torch.device, dtype: torch.dtype | None) -> tuple[object, list[Side]]:
    """The objective at the asked size on a random batch, and its sides: isoflop's step, and the plain
    loop where there is one (with ``--compile``: isoflop's whole step, as a run compiles it, and the plain
    loop's networks)."""
    from experiments.run.throughput import compile_networks
    from objectives import resolve

    torch.manual_seed(0)
    model = resolve(name)(size=args.size, vocab_size=args.vocab_size, max_position_embeddings=max(512, args.max_seq_length))
    model.configure_model()
    model = model.to(device)
    model.mask_token_id.fill_(4)  # any id outside the data's [10, vocab) range
    data = random_batch(args.batch_size, args.max_seq_length, args.vocab_size, device)
    if args.compile:
        model.compile_step()  # the whole training computation, as --compile true compiles a run's
    sides = [Side("isoflop", isoflop_step(model, data, dtype), model.flops_per_batch(args.batch_size, args.max_seq_length, "actual"))]
    plain = plain_loop(model)
    if plain is not None:
        step, networks = plain(model, data, dtype)
        if args.compile:
            compile_networks(networks)
        sides.append(Side("plain", step, plain_flops(model, args.batch_size, args.max_seq_length)))
    return model, sides


def bench_objective(name: str, args, device: torch.device, dtype: torch.dtype | None) -> tuple[float, list[Side]]:
    """Warm up every side, then ``args.rounds`` interleaved timed rounds of ``args.steps_per_round`` steps each.
    Returns the objective's training FLOPs per step and the measured sides."""
    model, sides = build_sides(name, args, device, dtype)
    warmup = WARMUP_STEPS + (1 if args.compile else 0)
    for side in sides:
        for _ in range(warmup):
            side.step()
    for _ in range(args.rounds):
        for side in sides:
            time_round(side, args.steps_per_round, device)
    return model.flops_per_batch(args.batch_size, args.max_seq_length, "actual"), sides


HEADER = (f"{'objective':<24}{'step':<9}{'tokens/s':>10}{'range':>17}{'ms/step':>9}{'own GFLOP':>10}{'GFLOP/s':>10}"
          f"{'MFU':>7}{'peak GB':>9}{'vs plain':>10}")


def table_rows(name: str, flops: float, sides: list[Side], args, peak: float) -> list[str]:
    """Two lines per objective (isoflop, plain), figures the median over rounds; the ratio is isoflop's
    tokens/s over plain's (the speed-up), ``--`` where there is no plain loop."""
    tokens = args.batch_size * args.max_seq_length * args.steps_per_round
    medians = [statistics.median(s.seconds) for s in sides]
    rows = []
    for i, (side, seconds) in enumerate(zip(sides, medians)):
        rates = sorted(tokens / s for s in side.seconds)
        ratio = "" if i else (f"{medians[1] / medians[0]:.2f}x" if len(sides) > 1 else "--")
        rows.append(f"{(name if i == 0 else ''):<24}{side.label:<9}{tokens / seconds:>10.0f}"
                    f"{f'{rates[0]:.0f}-{rates[-1]:.0f}':>17}{1000 * seconds / args.steps_per_round:>9.1f}"
                    f"{side.own_flops / 1e9:>10.1f}{flops * args.steps_per_round / seconds / 1e9:>10.1f}"
                    f"{flops * args.steps_per_round / seconds / peak:>7.1%}{side.peak_bytes / 1e9:>9.2f}{ratio:>10}")
    return rows


PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


def bench(
    size: str = "small",
    batch_size: int = 16,
    max_seq_length: int = 128,
    vocab_size: int = 30522,
    steps_per_round: int = 2,
    rounds: int = 3,
    objectives: list[str] | str | None = None,
    precision: str = "32-true",
    compile: bool = False,
    device: str = "auto",
    peak_flops: float | None = None,
) -> int:
    """Each objective's training step against the same step written plainly with transformers' classes.

    Args:
        size: Encoder size (ELECTRA's: tiny, small, base, large).
        batch_size: Sequences per step.
        max_seq_length: Tokens per sequence (at least 8: [CLS] A [SEP] B [SEP] with words to mask).
        vocab_size: Vocabulary size (at least 16: ids below 10 are special).
        steps_per_round: Timed steps per side per round.
        rounds: Interleaved rounds (isoflop, plain, isoflop, ...).
        objectives: Objectives to time, a list of class names (default: every objective).
        precision: 32-true, or bf16-mixed (bf16 autocast, as --trainer.precision bf16-mixed).
        compile: torch.compile the networks of both sides.
        device: auto (cuda if there is one), cpu, cuda or cuda:N.
        peak_flops: Peak FLOP/s of the device, for MFU (default: Lightning's table, else a measured matmul).
    """
    from types import SimpleNamespace

    from experiments.config import as_list
    from experiments.run.throughput import describe_machine
    from experiments.run.throughput import peak_flops as device_peak
    from objectives.encoder import ElectraFamily

    for option, value, least in (("--batch_size", batch_size, 1), ("--max_seq_length", max_seq_length, 8),
                                 ("--vocab_size", vocab_size, 16), ("--steps_per_round", steps_per_round, 1),
                                 ("--rounds", rounds, 1)):
        if value < least:
            raise errors.UsageError(f"{option}: must be at least {least}, got {value}")
    if size not in ElectraFamily.sizes:
        raise errors.UsageError(f"--size: unknown size {size!r}; choose one of {', '.join(ElectraFamily.sizes)}")
    if precision not in PRECISIONS:
        raise errors.UsageError(f"--precision: {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if peak_flops is not None and not peak_flops > 0:
        raise errors.UsageError(f"--peak_flops: must be positive (FLOP/s), got {peak_flops:g}")
    args = SimpleNamespace(size=size, batch_size=batch_size, max_seq_length=max_seq_length, vocab_size=vocab_size,
                           steps_per_round=steps_per_round, rounds=rounds, compile=compile)
    device_, names = _device(device), _objectives(as_list(objectives, "--objectives"))
    dtype = PRECISIONS[precision]
    peak, source = device_peak(device_, dtype or torch.float32, peak_flops)
    print(f"isoflop bench: {describe_machine(device_)}; size {size}, batch {batch_size} x "
          f"seq {max_seq_length}, vocab {vocab_size}, {'bf16 autocast' if dtype else 'fp32'}"
          f"{', torch.compile' if compile else ''}; {rounds} interleaved rounds of {steps_per_round} steps per "
          f"side after {WARMUP_STEPS + bool(compile)} warm-up steps; load average {_load()}", flush=True)
    print(f"peak {peak / 1e9:.1f} GFLOP/s for MFU ({source})", flush=True)
    print(HEADER, flush=True)
    for name in names:
        flops, sides = bench_objective(name, args, device_, dtype)
        print("\n".join(table_rows(name, flops, sides, args, peak)), flush=True)
    print(f"tokens/s: median over rounds (range: slowest-fastest round); GFLOP/s and MFU: the objective's training "
          f"FLOPs (actual) per second, the same count for both sides; own GFLOP: what each side's step multiplies; "
          f"peak GB: {'CUDA max allocated' if device_.type == 'cuda' else 'process peak RSS'}; "
          f"vs plain: isoflop's speed over the plain loop's. Load average at the end {_load()}.", flush=True)
    return 0


def _device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise errors.UsageError(f"--device: unknown device {text!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise errors.UsageError(f"--device: {text!r}: isoflop bench runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise errors.UsageError(f"--device: {text!r}, but torch sees no CUDA device here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise errors.UsageError(f"--device: {text!r}, but there are {torch.cuda.device_count()} CUDA devices")
    return device


def _objectives(names: list[str]) -> list[str]:
    from objectives import discover, resolve

    if not names:
        return list(discover())
    out = []
    for name in names:
        with errors.option_error("--objectives"):
            out.append(resolve(name).__name__)
    return out


def build_parser():
    """``isoflop bench``'s options: :func:`bench`'s arguments."""
    from experiments.config import new_parser

    parser = new_parser("isoflop bench", __doc__.split("\n\n")[0])
    parser.add_function_arguments(bench, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from experiments.config import parse_args

    return bench(**parse_args(build_parser(), list(argv or [])).as_dict())


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
