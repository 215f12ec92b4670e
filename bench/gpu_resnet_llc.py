"""ResNet18 λ̂ sampling cost: one SGLD chain-step against one training step at the same batch (issue 19).

The cell of expt_llc_curve: ``models.resnet.build_resnet`` (default ``resnet18``, k = 64,
11.2M parameters), turned into a flat loss by ``llc.estimate.flat_loss_for_module`` in
eval mode, so BatchNorm is functional: its running statistics are fixed buffers of
``functional_call`` and every vmapped chain sees the same deterministic function of its
own weights. The chains run in ``llc.sgld.run_sgld`` (the loop under
``estimate_llc_flat``), vmapped over C chains, at batch 1024 (the experiment's
``sgld_config.batch_size``).

The baseline is ``dynamics.train.train`` (what expt_llc_curve trains with): one SGD step
in train mode (BatchNorm on batch statistics) on a minibatch of the same size.

Data: random tensors of CIFAR-10 shape (n × 3 × 32 × 32, 10 classes). The machine that
runs this may have no CIFAR-10 and no network; the cost of a step does not depend on the
pixel values, so the timings are those of CIFAR-10.

Columns (medians over alternated repetitions):
- chain-step ms: wall time of ``run_sgld`` / (C · steps), after an untimed 2-step warm-up.
- training step ms: wall time of ``train`` / steps at the same batch.
- chain-step / training step: the issue's target is ≤ 1.2 at 4+ chains.

Run: python bench/gpu_resnet_llc.py --device cuda [--chains 1,4,8] [--compile] [--quick]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from _common import machine_line, markdown_table, median, parse_common, setup, wall

from dynamics.train import TrainingConfig, train
from llc.estimate import flat_loss_for_module
from llc.sgld import SGLDConfig, run_sgld
from models.resnet import MODEL_NAMES, build_resnet

TARGET = 1.2  # issue 19: chain-step ≤ 1.2 × training step at 4+ chains
EPSILON, GAMMA = 5e-6, 1.0  # expt_llc_curve's sgld_config defaults


def cifar_shaped(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1) (n, 3, 32, 32) and labels in 0..9 (n,): CIFAR-10's shapes and dtypes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


def chain_step_seconds(loss, w_star, x, y, chains: int, steps: int, batch: int, compile: bool) -> tuple[float, str]:
    """(seconds per chain-step, compile mode that ran) of one run_sgld call; raises if a chain diverged."""
    cfg = SGLDConfig(epsilon=EPSILON, gamma=GAMMA, num_steps=steps, batch_size=batch, num_chains=chains,
                     num_burnin_steps=steps // 2, compile=compile)
    dt, trace = wall(lambda: run_sgld(loss, w_star, x, y, cfg, seed=0), w_star.device)
    return dt / (chains * steps), trace.compile_mode


def train_step_seconds(model, x, y, steps: int, batch: int) -> float:
    """Seconds per step of dynamics.train (SGD, train mode) on a copy of the model."""
    cfg = TrainingConfig(optim="sgd", learning_rate=1e-4, momentum=None, batch_size=batch, num_steps=steps)
    m = copy.deepcopy(model)
    gen = torch.Generator(device=x.device).manual_seed(0)
    dt, _ = wall(lambda: train(m, F.cross_entropy, x, y, cfg, gen), x.device)
    return dt / steps


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.set_defaults(chains="1,4,8")
    p.add_argument("--model", default="resnet18", choices=tuple(MODEL_NAMES), help="expt_llc_curve's model_name")
    p.add_argument("--width", type=int, default=None, help="layer_width_factor k (default 64; 4 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="minibatch of a chain and of a training step (default 1024)")
    p.add_argument("--n", type=int, default=None, help="training points (default 50,000, CIFAR-10's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; 3 with --quick)")
    p.add_argument("--compile", action="store_true", help="add compile=True columns (cold compile per chain count)")
    args = p.parse_args()
    device = setup(args)
    quick = args.quick
    width = args.width or (4 if quick else 64)
    batch = args.batch or (32 if quick else 1024)
    n = args.n or (256 if quick else 50_000)
    steps = args.steps or (3 if quick else 30)
    reps = 1 if quick else args.reps
    chain_counts = [int(c) for c in args.chains.split(",")]
    if batch > n:
        raise SystemExit(f"--batch must be <= --n ({n}); got {batch}")
    header_line = machine_line(device)
    print(header_line, flush=True)

    torch.manual_seed(0)
    model = build_resnet(args.model, 10, base_channels=width).to(device)
    x, y = cifar_shaped(n, device)
    model.eval()  # as expt_llc_curve's checkpoint: BatchNorm on its running statistics while sampling
    loss, w_star = flat_loss_for_module(model, F.cross_entropy, torch.float32, device)

    train_step_seconds(model, x, y, 2, batch)  # warm-up: cuDNN autotuning, allocator
    modes = [False, True] if args.compile else [False]
    header = ["C", "chain-step ms", "training step ms", "chain-step / training step"]
    if args.compile:
        header += ["compiled chain-step ms", "compiled / training step", "compile mode", "compile s"]
    header += ["peak GiB"] if device.type == "cuda" else []
    intro = (f"Measured on: {header_line}. Device `{device}`; {args.model} k = {width} (P = {w_star.numel():,}), "
             f"eval-mode functional BatchNorm; random CIFAR-10-shaped data (n = {n:,}, 3×32×32, 10 classes: "
             f"timing only, no CIFAR-10 needed); batch {batch}, {steps} timed steps, ε = {EPSILON:g}, "
             f"γ = {GAMMA:g}, nβ = n / log n; {reps} alternating repetitions per cell"
             + (" (QUICK smoke run: not a measurement)" if quick else "") + ". Times are ms per chain-step (median).")
    rows, ratios = [], {}
    for C in chain_counts:
        # Untimed 2-step warm-up per mode (with compile=True: its compile time, listed as "compile s").
        warm = {m: wall(lambda m=m: chain_step_seconds(loss, w_star, x, y, C, 2, batch, m), device)[0]
                for m in modes}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = {m: [] for m in [*modes, "train"]}
        ran = {}
        names = list(times)
        for r in range(reps):
            for v in names[r % len(names):] + names[:r % len(names)]:  # alternate who goes first
                if v == "train":
                    times[v].append(train_step_seconds(model, x, y, steps, batch))
                else:
                    s, ran[v] = chain_step_seconds(loss, w_star, x, y, C, steps, batch, v)
                    times[v].append(s)
        ms = {v: median(t) * 1e3 for v, t in times.items()}
        ratios[C] = ms[False] / ms["train"]
        row = [str(C), f"{ms[False]:.2f}", f"{ms['train']:.2f}", f"{ratios[C]:.2f}"]
        if args.compile:
            row += [f"{ms[True]:.2f}", f"{ms[True] / ms['train']:.2f}", ran[True], f"{warm[True]:.0f}"]
        if device.type == "cuda":
            row += [f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
        body = "\n\n".join([intro, markdown_table(header, rows), verdict(ratios, quick)])
        if args.markdown_out is not None:  # after every chain count, so a run stopped at a time cap keeps its rows
            args.markdown_out.write_text(body + "\n")
    print("\n" + body)


def verdict(ratios: dict[int, float], quick: bool) -> str:
    """Issue 19's target line: the largest eager ratio over the chain counts >= 4."""
    big = {C: r for C, r in ratios.items() if C >= 4}
    if not big:
        return "- Target (issue 19): not measured (no chain count ≥ 4 so far)"
    worst = max(big, key=big.get)
    return (f"- Target (issue 19): ResNet18 chain-step ≤ {TARGET}× a training step at 4+ chains, eager: "
            f"largest ratio {big[worst]:.2f} at {worst} chains: {'met' if big[worst] <= TARGET else 'NOT met'}"
            + (" (QUICK smoke run: not a measurement)" if quick else ""))


if __name__ == "__main__":
    main()
