"""The training step against the hardware's limit: python benchmarks/bench_train_step.py

For each shape (gcnn-small as train.py runs it by default; gcnn-8 at WikiText-2's vocabulary,
8 x 256 tokens, Nesterov SGD), one run times, interleaved round by round so that a drifting load
hits every variant alike:

- gcnn's model, fp32 and under bf16 autocast (the precisions `--precision auto` chooses from);
- the plain port of benchmarks/plain_port.py (nn.Conv1d + F.glu + weight_norm +
  nn.AdaptiveLogSoftmaxWithLoss), the same two precisions: what gcnn must at least match;
- the machine's best matrix-product rate, fp32 and bf16, measured in the same run.

One step = forward, backward and the optimizer's update on the same Zipf-distributed batch.
MFU (model-FLOPs utilisation) = the step's useful FLOPs per second / the best matrix-product
rate of either precision. Useful FLOPs = 3 x the forward pass's multiply-adds x 2 (the backward
pass costs twice the forward), counting every layer on every token it is fed and each softmax
tail only on the targets that belong to it: what the model must compute, not what an
implementation happens to do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from gcnn.allocator import keep_large_blocks
from gcnn.devices import resolve_device
from gcnn.errors import GcnnError
from gcnn.evaluation.inference import PRECISIONS
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import PRESETS, build_model
from gcnn.precision import available, choose_precision
from gcnn.timing import interleaved_timings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_port import plain_port  # noqa: E402

# name -> (preset, rows, scored tokens per row, optimizer); each row also holds the model's
# receptive_field - 1 tokens of unscored context, as in training
SHAPES = {
    "gcnn-small": ("gcnn-small", 16, 256, "adamw"),
    "gcnn-8-small": ("gcnn-8-small", 8, 256, "adamw"),  # train.py's default, as it runs it
    "gcnn-8": ("gcnn-8", 8, 256, "nag"),
    # GPU scale (benchmarks/gpu_check.sh): fairseq's 1024-token blocks, WikiText-103's vocabulary
    "gcnn-14": ("gcnn-14", 4, 1024, "nag"),
}
WT103_VOCAB = 267_735


def zipf_tokens(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    ids = torch.multinomial(weights, shape[0] * shape[1], replacement=True, generator=g)
    return ids.view(shape)


def training_batch(model, vocab_size: int, rows: int, block: int):
    """inputs, targets of `rows` rows as the trainer feeds them: each row `block` scored tokens
    after the model's receptive_field - 1 tokens of unscored context (targets -100 there)."""
    context = model.receptive_field - 1
    inputs = zipf_tokens(vocab_size, (rows, context + block), seed=0)
    targets = zipf_tokens(vocab_size, (rows, context + block), seed=1)
    targets[:, :context] = -100
    return inputs, targets


def useful_flops(model, targets: torch.Tensor) -> float:
    """3 x forward FLOPs: the network on every fed token, the head on every scored one, each
    tail on its own targets (counted from the batch's softmax plan)."""
    softmax = model.softmax
    body = (
        model.flops_per_token(full_softmax=False)
        - 2 * softmax.in_features * softmax.head.out_features
    )
    plan = model.plan(targets)
    forward = (
        body * targets.numel() + 2 * softmax.in_features * softmax.head.out_features * plan.count
    )
    for tail, rows in zip(softmax.tails, plan.rows, strict=True):
        per_row = sum(m.in_features * m.out_features for m in tail if hasattr(m, "in_features"))
        forward += 2 * per_row * rows.numel()
    return 3.0 * forward


def optimizer_for(model, kind: str):
    """The plain port's optimizer: torch.optim's defaults, as ports use them."""
    if kind == "nag":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def trainer_optimizer(model, kind: str, device: str):
    """gcnn's own: what the trainer builds (fused AdamW, no decay on gains and biases)."""
    from gcnn.training.config import TrainConfig
    from gcnn.training.optim import make_optimizer

    config = TrainConfig(optimizer=kind, lr=0.1 if kind == "nag" else 1e-3, weight_decay=0.01)
    return make_optimizer(model, config, torch.device(device))


def gcnn_step(model, inputs, targets, bf16: bool, optimizer, loss_fn=None):
    # the plan is made on the host while the trainer builds the batch
    plan = model.plan(targets.cpu()).to(inputs.device)
    loss_fn = loss_fn or model.loss
    carried = None  # an LSTM's state, carried from step to step as the trainer carries it

    def step():
        nonlocal carried
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            nll, count, state = loss_fn(inputs, targets, carried, plan)
        (nll / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model.is_recurrent:
            carried = model.detach_state(state)

    return step


def plain_step(model, inputs, targets, bf16: bool, optimizer):
    def step():
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def matmul_fn(dtype: torch.dtype, device: str):
    n = 8192 if device.startswith("cuda") else 2048  # big enough to reach the peak rate
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return lambda: a @ b, 2.0 * n**3


def interleaved(calls: dict, rounds: int, device: str, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call, timed in interleaved rounds (gcnn.timing)."""
    timings = interleaved_timings(list(calls.values()), rounds, warmup, device)
    return {name: t.median for name, t in zip(calls, timings, strict=True)}


def measure(
    shape: str,
    vocab_size: int | None,
    rounds: int,
    rows: int = 0,
    block: int = 0,
    device: str = "cpu",
    compile_model: bool = False,
    plain: bool = True,
) -> dict:
    preset, default_rows, default_block, opt = SHAPES[shape]
    rows, block = rows or default_rows, block or default_block
    vocab_size = vocab_size or (WT103_VOCAB if shape == "gcnn-14" else 33_278)
    torch.manual_seed(0)
    ours = build_model(preset, vocab_size).to(device)
    context = ours.receptive_field - 1
    inputs, targets = (t.to(device) for t in training_batch(ours, vocab_size, rows, block))
    precisions = available(device)  # bf16 only where the hardware has a path for it
    calls = {}
    for precision in precisions:
        bf16 = precision == "bf16"
        calls[f"gcnn {precision}"] = gcnn_step(
            ours, inputs, targets, bf16, optimizer_for(ours, opt)
        )
    if compile_model:  # the trainer's --compile: the loss compiled as one graph per precision
        compiled = torch.compile(ours.loss)
        for precision in precisions:
            optimizer = trainer_optimizer(ours, opt, device)
            step = gcnn_step(ours, inputs, targets, precision == "bf16", optimizer, compiled)
            calls[f"gcnn+compile {precision}"] = step
    if plain:
        torch.manual_seed(0)
        port = plain_port(PRESETS[preset], vocab_size).to(device)
        for precision in precisions:
            calls[f"plain {precision}"] = plain_step(
                port, inputs, targets, precision == "bf16", optimizer_for(port, opt)
            )
    flops = {}
    for precision in precisions:
        calls[f"matmul {precision}"], flops[precision] = matmul_fn(PRECISIONS[precision], device)
    # what --precision auto would pick here, measured the way the trainer measures it (before
    # the timing below, which then says whether that pick was the faster one)
    with tempfile.TemporaryDirectory() as cache, _env("GCNN_CACHE", cache):
        auto = choose_precision(ours, inputs, targets, "train")
    seconds = interleaved(calls, rounds, device)
    peak = {p: flops[p] / seconds[f"matmul {p}"] for p in flops}
    return {
        "shape": f"{preset} {rows}x({context}+{block}) vocab {vocab_size:,} {opt} on {device}",
        "seconds": seconds,
        "peak": peak,
        "model_flops": useful_flops(ours, targets.cpu()),
        "auto": auto,
        "tokens": rows * block,
    }


def report(result: dict) -> list[str]:
    s, peak, flops = result["seconds"], result["peak"], result["model_flops"]
    best = max(peak.values())
    lines = [
        f"{result['shape']}: {flops / 1e9:.1f} useful GFLOP per step; matrix products "
        f"{peak['fp32'] / 1e9:.0f} GFLOP/s fp32, "
        + (f"{peak['bf16'] / 1e9:.0f} bf16" if "bf16" in peak else "bf16 not timed: no bf16 path")
        + f" (best {best / 1e9:.0f})",
        "| model | precision | ms/step | tokens/s | MFU vs best | gcnn / plain speed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for who in ("gcnn", "gcnn+compile", "plain"):
        for precision in ("fp32", "bf16"):
            t = s.get(f"{who} {precision}")
            if t is None:
                continue
            plain = s.get(f"plain {precision}")
            ratio = f"{plain / t:.2f}x" if plain and who != "plain" else ""
            lines.append(
                f"| {who} | {precision} | {1e3 * t:,.0f} | {result['tokens'] / t:,.0f} "
                f"| {100 * flops / t / best:.0f}% | {ratio} |"
            )
    t = {p: s[f"gcnn {p}"] for p in peak}
    best = min(t, key=t.get)
    lines.append(
        f"--precision auto picked {result['auto']}: "
        + (
            "the faster one in this run"
            if result["auto"] == best
            else f"{100 * (t[result['auto']] / t[best] - 1):.1f}% slower than {best} in this run"
        )
    )
    return lines


@contextlib.contextmanager
def _env(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def add_malloc_option(parser) -> None:
    """--malloc, for the benchmarks that time or profile the training step."""
    parser.add_argument(
        "--malloc",
        choices=["keep", "default"],
        default="keep",
        help="keep: glibc keeps large blocks, as train.py sets it (gcnn.allocator); default: "
        "glibc's own thresholds, whose page faults show up in whichever op allocates",
    )


def set_malloc(choice: str) -> str:
    """Apply --malloc; returns what was done, for the output."""
    return keep_large_blocks() if choice == "keep" else "malloc: glibc's own thresholds"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_train_step.py", description=__doc__
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["gcnn-small", "gcnn-8"],
        choices=list(SHAPES),
        help="default: the CPU shapes (gcnn-14 is for a GPU: benchmarks/gpu_check.sh)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="default: WikiText-2's 33,278 (gcnn-14: WikiText-103's 267,735)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain port")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=0, help="rows per batch (default: the shape's)")
    parser.add_argument("--block", type=int, default=0, help="scored tokens per row (default 256)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.vocab_size or 12_000) < 12_000 or args.rows < 0 or args.block < 0:
        raise GcnnError(
            "--rounds must be >= 1, --vocab-size >= 12000 (the cutoffs), --rows/--block >= 1"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        print(keep_large_blocks())
    args.device = resolve_device(args.device)
    if args.device.startswith("cuda"):
        # TF32 would make "fp32" a different precision from the CPU's; keep it strict
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        print(f"{torch.cuda.get_device_name(args.device)}; torch {torch.__version__}")
    else:
        print(f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    for shape in args.shapes:
        print()
        result = measure(
            shape,
            args.vocab_size,
            args.rounds,
            args.rows,
            args.block,
            args.device,
            args.compile,
            not args.no_plain,
        )
        print("\n".join(report(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
