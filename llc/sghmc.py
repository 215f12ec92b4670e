"""Momentum samplers on the localized, tempered posterior: SGHMC and SGNHT, vectorised over chains.

Both sample p(w) ∝ exp(-U(w)), U(w) = nβ L_n(w) + (γ/2) ||w - w*||² (llc.sgld's
target), from minibatch forces ∇U_B(w) = nβ ∇L_B(w) + γ (w - w*), with a momentum
v per chain. In the "learning-rate" variables of Chen et al. (2014, §3.3), where
v is the position increment of one step and ε plays the role of their η, the
stationary momentum is v ~ N(0, ε I), so a step moves w by ~sqrt(ε) per
coordinate, as an SGLD step of the same ε does.

SGHMC (Chen, Fox & Guestrin 2014, "Stochastic gradient Hamiltonian Monte Carlo",
eq. 15 with the noise estimate β̂ = 0), friction α:

    v_{t+1} = v_t - ε ∇U_B(w_t) - α v_t + sqrt(2 α ε) ξ_t,    w_{t+1} = w_t + v_{t+1}.

SGNHT (Ding et al. 2014, "Bayesian sampling using stochastic gradient
thermostats"), as devinterp's ``SGNHT`` optimizer orders it, with diffusion A and a
thermostat ζ per chain that adapts the friction until the mean kinetic energy
|v|²/P equals ε:

    v <- v - ε ∇U_B(w_t);  v <- v - ζ v;  v <- v + sqrt(2 A ε) ξ_t;  w_{t+1} = w_t + v;
    ζ <- ζ + |v|²/P - ε.

Both start at w* with v_0 = sqrt(ε) η, η ~ N(0, I) drawn from the chain's own
generator before its first block (devinterp's initial momentum), and ζ_0 = A
unless ``thermostat_init`` is given (devinterp's default). devinterp's optimizer
localises nothing and takes the gradient at n/log n; here the localiser γ and nβ
enter through U, as in llc.sgld. The step is a kernel on llc.chain's driver, which
draws each chain's minibatch indices and noise exactly as for SGLD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.func import vmap

from core.types import FlatLoss
from llc.chain import (
    Draws,
    StepCallback,
    Stream,
    check_number,
    data_size,
    reject_compile_true,
    run_minibatch_chains,
)
from llc.minibatch import Minibatches
from llc.precision import autocast, check_amp_device
from llc.sgld import SGLDConfig


@dataclass(frozen=True, kw_only=True)
class SGHMCConfig(SGLDConfig):
    """SGLDConfig's keys (ε, γ, steps, batch, chains, nβ, burn-in, trace kind) and the friction.

    Attributes:
        friction: α in (0, 1]: the fraction of the momentum damped per step; the
            injected noise has variance 2αε. α = 1 forgets the momentum every step.
        compile: "auto" or False (no compiled step; True is a ValueError).
    """

    friction: float = 0.1
    sampler_name: ClassVar[str] = "sghmc"

    def __post_init__(self):
        reject_compile_true(self.compile, "SGHMC (llc.sghmc)")
        super().__post_init__()
        check_number("friction", self.friction, 0, 1, strict=True)


@dataclass(frozen=True, kw_only=True)
class SGNHTConfig(SGLDConfig):
    """SGLDConfig's keys and the Nosé–Hoover thermostat's.

    Attributes:
        diffusion_factor: A > 0, the injected noise has variance 2Aε (devinterp's default 0.01).
        thermostat_init: ζ_0, the thermostat's start; None means A (as devinterp).
        compile: "auto" or False (no compiled step; True is a ValueError).
    """

    diffusion_factor: float = 0.01
    thermostat_init: float | None = None
    sampler_name: ClassVar[str] = "sgnht"

    def __post_init__(self):
        reject_compile_true(self.compile, "SGNHT (llc.sghmc)")
        super().__post_init__()
        check_number("diffusion_factor", self.diffusion_factor, 0, strict=True)
        check_number("thermostat_init", self.thermostat_init, none_ok=True)

    def resolve_thermostat_init(self) -> float:
        return float(self.diffusion_factor if self.thermostat_init is None else self.thermostat_init)


@dataclass
class MomentumTrace:
    """Raw output of :func:`run_sghmc` / :func:`run_sgnht`.

    Attributes:
        loss: (C, T) float64 loss trace on CPU (as llc.sgld.SGLDTrace.loss).
        final_w: (C, P) last state of each chain.
        final_v: (C, P) last momentum.
        thermostat: (C,) final ζ (SGNHT) or None (SGHMC).
        nbeta: the n·β used.
        burnin: number of discarded leading draws.
    """

    loss: Tensor
    final_w: Tensor
    final_v: Tensor
    thermostat: Tensor | None
    nbeta: float
    burnin: int
    compile_mode: str = "eager"


class MomentumKernel:
    """SGHMC (thermostat=False) or SGNHT (True) as an llc.chain kernel; holds v (C, P) and ζ (C, 1)."""

    uniform = False

    def __init__(self, loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig, nbeta: float,
                 thermostat: bool):
        self.name = "SGNHT" if thermostat else "SGHMC"
        self.batch_size, self.nbeta, self.eps, self.gamma = config.batch_size, nbeta, config.epsilon, config.gamma
        self.loss_fn, self.batched_loss, self.x, self.y = loss_fn, vmap(loss_fn), x, y
        self.batches = Minibatches(x, y)  # (x, y, idx (C, B)) -> their rows (llc.minibatch)
        self.w_star = w_star.detach()
        check_amp_device(config.amp, w_star.device, w_star.dtype)
        self.amp = config.amp
        self.thermostat = thermostat
        if thermostat:
            self.alpha, self.zeta0 = config.diffusion_factor, config.resolve_thermostat_init()
        else:
            self.alpha, self.zeta0 = config.friction, None
        self.noise = math.sqrt(2 * self.alpha * self.eps)
        self.v = self.zeta = None

    def init(self, w: Tensor, gens: list[torch.Generator]) -> None:
        C, P = w.shape
        self.v = torch.empty_like(w)  # (C, P)
        for c, g in enumerate(gens):  # before the first block: chain c's stream, whatever C
            torch.randn(P, generator=g, device=w.device, dtype=w.dtype, out=self.v[c])
        self.v.mul_(math.sqrt(self.eps))
        if self.thermostat:
            self.zeta = torch.full((C, 1), self.zeta0, dtype=w.dtype, device=w.device)  # (C, 1)

    def force(self, w: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """∇U_B(w) (C, P) and L_B(w) (C,) on each chain's minibatch idx (C, B)."""
        xb, yb = self.batches(self.x, self.y, idx)  # (C, B, ...)
        with torch.enable_grad(), autocast(self.amp, w.device):  # amp: llc.precision
            wg = w.detach().requires_grad_(True)
            if wg.shape[0] == 1:  # one chain: the plain kernels are faster than vmap's (llc.sgld)
                loss = self.loss_fn(wg[0], xb[0], yb[0]).reshape(1)
            else:
                loss = self.batched_loss(wg, xb, yb)  # (C,)
            (g,) = torch.autograd.grad(loss.sum(), wg)  # chains do not interact
        return g.mul_(self.nbeta).add_(w - self.w_star, alpha=self.gamma), loss.detach().to(w.dtype)

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        f, loss = self.force(w, draws.idx)
        v, eps = self.v, self.eps
        if self.thermostat:  # devinterp's order: force, then friction on the updated v, then noise
            v.sub_(f, alpha=eps)
            v.sub_(self.zeta * v)
            v.add_(draws.xi, alpha=self.noise)
            w.add_(v)
            self.zeta.add_((v * v).mean(1, keepdim=True) - eps)
        else:  # Chen et al. eq. 15: friction on v_t
            v.mul_(1 - self.alpha).sub_(f, alpha=eps).add_(draws.xi, alpha=self.noise)
            w.add_(v)
        return loss


def _run(loss_fn, w_star, x, y, config, seed, eval_batch_size, callback, thermostat, stream) -> MomentumTrace:
    n = data_size(x, stream, config.batch_size, w_star)
    kernel = MomentumKernel(loss_fn, w_star, x, y, config, config.resolve_nbeta(n), thermostat)
    trace, w = run_minibatch_chains(kernel, loss_fn, w_star, x, y, config, seed, eval_batch_size, callback, stream)
    zeta = kernel.zeta[:, 0].clone() if thermostat else None
    return MomentumTrace(loss=trace.cpu(), final_w=w, final_v=kernel.v, thermostat=zeta, nbeta=kernel.nbeta,
                         burnin=config.burnin())


def _runner(cls: type, thermostat: bool):
    """run_sghmc (SGHMCConfig, no thermostat) or run_sgnht (SGNHTConfig, thermostat): one body for both."""
    name = cls.sampler_name

    def run(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig, seed: int,
            eval_batch_size: int = 4096, callback: StepCallback | None = None,
            stream: Stream | None = None) -> MomentumTrace:
        if not isinstance(config, cls):
            raise ValueError(f"config must be an {cls.__name__}; got {type(config).__name__}")
        return _run(loss_fn, w_star, x, y, config, seed, eval_batch_size, callback, thermostat, stream)

    run.__name__ = run.__qualname__ = f"run_{name}"
    run.__doc__ = f"""Run ``config.num_chains`` {name.upper()} chains from w*, vectorised over chains.

    Arguments (``stream`` too) as for llc.sgld.run_sgld; ``config`` must be an {cls.__name__}.

    Raises:
        ValueError: batch_size > n, a w* that is not flat, or another config class.
        ChainDivergenceError: a chain's loss became NaN or inf (names the chain and step).
    """
    return run


run_sghmc = _runner(SGHMCConfig, thermostat=False)
run_sgnht = _runner(SGNHTConfig, thermostat=True)
