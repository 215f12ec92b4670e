"""Shared pieces of the benchmark scripts: workloads, timing, machine line, markdown.

Every workload is an ``nn.Module`` at its centre w* (float32, eval mode), a mean
loss ``loss(outputs, y)``, the n training points and the SGLD settings used for it.
The samplers under test all receive exactly these objects.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from data.synthetic import teacher_dataset
from llc.aoyagi import dln_learning_coefficient
from models.dln import DeepLinearNetwork, end_to_end_matrix, make_true_params, numerical_rank

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


# Mean squared error over batch and outputs, no 1/2 (docs/notes/llc.md#conventions), and mean
# cross-entropy: torch's own functions, which llc.fused recognises and batches without vmap.
mse = nn.functional.mse_loss
cross_entropy = nn.functional.cross_entropy


@dataclass
class Workload:
    """One sampling problem, identical for every sampler.

    Attributes:
        key: short name used in tables ('a', 'b', 'c', ...).
        title: what it is, for the table caption.
        model: the network at w* (float32, eval mode, on the device).
        loss: mean loss of (outputs, targets).
        x, y: the n training points, on the device.
        epsilon, gamma: SGLD step size ε and localisation γ.
        num_steps: steps per chain, burn-in included.
        num_burnin_steps: leading draws dropped from λ̂.
        batch_size: minibatch per step and chain.
        true_lambda: Aoyagi's λ for DLNs, else None.
    """

    key: str
    title: str
    model: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor
    epsilon: float
    gamma: float
    num_steps: int
    num_burnin_steps: int
    batch_size: int = 500
    true_lambda: float | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def dln_workload(
    key: str, input_dim: int, widths: list[int], n: int, *, epsilon: float, gamma: float,
    num_steps: int, num_burnin_steps: int, device: torch.device, seed: int = 0,
) -> Workload:
    """A DLN teacher problem: w* = a PyTorch-default-init teacher, y = f(w*, x), x ~ U(-10, 10)^d."""
    gen = torch.Generator().manual_seed(seed)
    w_star = make_true_params(input_dim, widths, "random", gen)
    net = DeepLinearNetwork(input_dim, widths)
    x, y = teacher_dataset(lambda p, xb: functional_call(net, p, (xb,)), w_star, n, input_dim, "uniform", gen)
    net.load_state_dict(w_star)
    rank, _ = numerical_rank(end_to_end_matrix(w_star))
    true_lambda, _ = dln_learning_coefficient(input_dim, widths, rank)
    net = net.float().to(device).eval()
    title = f"DLN {input_dim}→{'→'.join(map(str, widths))} (P = {net_params(net):,}), n = {n:,}, MSE"
    return Workload(key, title, net, mse, x.float().to(device), y.float().to(device), epsilon, gamma,
                    num_steps, num_burnin_steps, true_lambda=true_lambda)


def mlp_workload(
    key: str, input_dim: int, hidden: list[int], classes: int, n: int, *, epsilon: float, gamma: float,
    num_steps: int, num_burnin_steps: int, device: torch.device, train_steps: int = 2000, seed: int = 0,
) -> Workload:
    """A ReLU MLP classifier trained with Adam on teacher labels; w* = the trained weights.

    x ~ N(0, I); labels are the argmax of a random teacher MLP of the same shape.
    """
    gen = torch.Generator().manual_seed(seed)

    def mlp() -> nn.Sequential:
        sizes = [input_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], classes))

    torch.manual_seed(seed)
    teacher, student = mlp(), mlp()
    x = torch.randn(n, input_dim, generator=gen)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(train_steps):
        i = torch.randint(0, n, (500,), generator=gen)
        opt.zero_grad()
        cross_entropy(student(x[i]), y[i]).backward()
        opt.step()
    student = student.to(device).eval()
    title = (f"MLP {input_dim}→{'→'.join(map(str, hidden))}→{classes} ReLU (P = {net_params(student):,}), "
             f"n = {n:,}, cross-entropy, w* = {train_steps} Adam steps")
    return Workload(key, title, student, cross_entropy, x.to(device), y.to(device), epsilon, gamma,
                    num_steps, num_burnin_steps)


def small_workloads(keys: str, steps: int, device: torch.device, quick: bool):
    """llc_vs_devinterp.py's workloads (a) and (c) at ``steps`` steps (half burn-in), with their fused flat loss.

    (a) the 165-parameter DLN 7→9→6→8 (MSE), (c) the 6,154-parameter ReLU MLP (cross-entropy).
    Yields (workload, flat loss, w*) for each comma-separated key; stops if a loss is not fused.
    """
    from llc.estimate import flat_loss_for_module

    builders = {
        "a": lambda: dln_workload("a", 7, [9, 6, 8], 100_000, epsilon=5e-7, gamma=1.0, num_steps=steps,
                                  num_burnin_steps=steps // 2, device=device),
        "c": lambda: mlp_workload("c", 20, [64, 64], 10, 100_000, epsilon=1e-5, gamma=10.0, num_steps=steps,
                                  num_burnin_steps=steps // 2, device=device, train_steps=100 if quick else 2000),
    }
    for key in keys.split(","):
        wl = builders[key]()
        loss, w_star = flat_loss_for_module(wl.model, wl.loss, torch.float32, device)
        if loss.path != "fused":
            raise SystemExit(f"workload {key}: flat_loss_for_module took the {loss.path} path")
        yield wl, loss, w_star


def net_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, synchronising CUDA around it."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line(device: torch.device) -> str:
    """The hardware and software a table was measured on."""
    if device.type == "cuda":
        hw = f"GPU {torch.cuda.get_device_name(device)} (host CPU {cpu_name()})"
    else:
        hw = f"CPU {cpu_name()}, {os.cpu_count()} logical cores"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{hw}; torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
            f"Python {platform.python_version()}; {date}; load average (1/5/15 min) at start {load_average()}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    s = sorted(values)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} (written by bench/run_all.py) -->", f"<!-- END {name} -->"


def replace_marked(path: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between the markers ``begin`` and ``end`` in ``path`` (appending them if absent).

    The file is re-read right before writing, so sections other scripts wrote meanwhile survive.
    """
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def rewrite_section(path: Path, name: str, body: str) -> None:
    """Replace the section ``name`` (bench/run_all.py's markers) in ``path``."""
    replace_marked(path, *section_markers(name), body)


def parse_common(description: str):
    """argparse with the options every bench script takes."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per variant, alternated (default 3)")
    p.add_argument("--chains", default="1,4,8,16", help="comma-separated chain counts")
    p.add_argument("--quick", action="store_true", help="few steps, one repetition: a smoke run, not a measurement")
    p.add_argument("--markdown-out", type=Path, default=None, help="also write the table section to this file")
    return p


def setup(args) -> torch.device:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return device


class Session(NamedTuple):
    """A bench script's parsed options and what its main derives from them."""

    args: object  # the argparse.Namespace
    device: torch.device
    chain_counts: list[int]
    reps: int  # 1 with --quick
    machine: str  # machine_line(device), printed at the start


def start(parser) -> Session:
    """Parse the command line, apply --threads and --device, read --chains and --reps, print the machine line."""
    args = parser.parse_args()
    device = setup(args)
    session = Session(args, device, [int(c) for c in args.chains.split(",")], 1 if args.quick else args.reps,
                      machine_line(device))
    print(session.machine, flush=True)
    return session


def finish(args, body: str) -> None:
    """Print a script's markdown section and write it to --markdown-out if given."""
    print("\n" + body)
    if args.markdown_out is not None:
        args.markdown_out.write_text(body + "\n")
