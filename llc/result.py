"""The outcome of a λ̂ estimate, built the same way from every sampler's trace.

    λ̂ = nβ (E_t[L(w_t)] - L_n(w*)),

with E_t the average over each chain's post-burn-in draws and L_n(w*) the exact
full-data loss at the centre (computed once on all n points, so it adds no noise
and no correlation between the chains' estimates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from core.types import FlatLoss
from llc.chain import ChainConfig, full_data_loss
from llc.diagnostics import Diagnostics, diagnose, split_rhat


@dataclass
class LLCResult:
    """Outcome of one multi-chain λ̂ estimate.

    Attributes:
        lambdahat: mean of the per-chain estimates.
        lambdahat_std: their standard deviation (ddof=1; 0 for one chain).
        lambdahat_per_chain: (C,) estimates.
        rhat: split-R-hat of the post-burn-in traces (NaN for one chain).
        init_loss: L_n(w*), the full-data loss at the centre.
        nbeta: the n·β used.
        loss_trace: (C, T) float64 trace (NaN where not recorded); each chain's trace.
        burnin: discarded leading draws.
        config: the sampler configuration.
        compile_mode: the SGLD step that ran: "eager", "compiled", "cuda-graph" (CUDA
            graph replay, llc.cuda_graph), "eager-fallback" (torch.compile or the capture
            failed), or "eager-amp" (compile skipped for amp); ``compiled`` says whether
            torch.compile ran.
        amp: the mixed precision of the loss forward/backward (None, "bf16" or "fp16";
            llc.precision); the trace is float64 either way.
        loss_path: how the model's loss was evaluated: "fused" (llc.fused: a stack of Linear
            layers and activations as batched matmuls) or "generic" (functional_call, vmapped).
        diagnostics: rank R-hat, bulk/tail ESS, trend p-values and the ``healthy``
            flag with its reasons (llc.diagnostics.diagnose), computed from the
            post-burn-in trace when the result is built; also as properties.
    """

    lambdahat: float
    lambdahat_std: float
    lambdahat_per_chain: np.ndarray
    rhat: float
    init_loss: float
    nbeta: float
    loss_trace: np.ndarray
    burnin: int
    config: ChainConfig = field(repr=False)
    compile_mode: str = "eager"
    loss_path: str = "generic"
    amp: str | None = None
    diagnostics: Diagnostics = field(init=False, repr=False)

    def __post_init__(self):
        self.diagnostics = diagnose(self.loss_trace[:, self.burnin:], self.lambdahat)

    @property
    def compiled(self) -> bool:
        return self.compile_mode == "compiled"

    @property
    def rhat_rank(self) -> float:
        """Rank-normalised split-R-hat (Vehtari et al. 2021); ``rhat`` stays the classic split-R-hat."""
        return self.diagnostics.rhat_rank

    @property
    def ess_bulk(self) -> float:
        return self.diagnostics.ess_bulk

    @property
    def ess_tail(self) -> float:
        return self.diagnostics.ess_tail

    @property
    def healthy(self) -> bool:
        """R-hat <= 1.05, bulk and tail ESS >= 100, λ̂ >= 0 and no chain trending after burn-in."""
        return self.diagnostics.healthy

    @property
    def health_reasons(self) -> list[str]:
        return self.diagnostics.reasons

    def lambdahat_trace(self) -> np.ndarray:
        """(C, T) per-draw λ̂ contributions nβ (L(w_t) − L_n(w*)); their post-burn-in mean is λ̂ per chain."""
        return self.nbeta * (self.loss_trace - self.init_loss)

    def summary(self) -> dict:
        """JSON-ready scalars for a Sacred result or a DataFrame row."""
        post = self.loss_trace[:, self.burnin:]
        return {
            "lambdahat": self.lambdahat,
            "lambdahat_std": self.lambdahat_std,
            "lambdahat_per_chain": [float(v) for v in self.lambdahat_per_chain],
            "rhat": None if math.isnan(self.rhat) else self.rhat,
            "init_loss": self.init_loss,
            "nbeta": self.nbeta,
            "trace_mean_per_chain": [float(v) for v in post.mean(axis=1)],
            "trace_std_per_chain": [float(v) for v in post.std(axis=1)],
            "rhat_rank": _json_float(self.rhat_rank),
            "ess_bulk": _json_float(self.ess_bulk),
            "ess_tail": _json_float(self.ess_tail),
            "healthy": bool(self.healthy),
            "health_reasons": list(self.health_reasons),
            "compiled": self.compiled,
            "compile_mode": self.compile_mode,
            "loss_path": self.loss_path,
            "amp": self.amp,
        }


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def llc_from_trace(loss_trace: Tensor, init_loss: float, nbeta: float, burnin: int) -> np.ndarray:
    """Per-chain λ̂ = nβ (mean_{t >= burnin} L(w_t) - L_n(w*)) from a (C, T) trace."""
    post = loss_trace[:, burnin:].double()
    return (nbeta * (post.mean(dim=1) - init_loss)).numpy()


def llc_result(loss_trace: Tensor, init_loss: float, nbeta: float, burnin: int, config,
               compile_mode: str = "eager") -> LLCResult:
    """LLCResult (λ̂ mean, std, per chain, R-hat) from a (C, T) trace and L_n(w*).

    compile_mode: the step that ran (an SGLDTrace's ``compile_mode``; the other samplers never compile).
    """
    per_chain = llc_from_trace(loss_trace, init_loss, nbeta, burnin)
    post = loss_trace[:, burnin:].numpy()
    return LLCResult(
        lambdahat=float(per_chain.mean()),
        lambdahat_std=float(per_chain.std(ddof=1)) if per_chain.size > 1 else 0.0,
        lambdahat_per_chain=per_chain,
        rhat=split_rhat(post) if per_chain.size > 1 else float("nan"),
        init_loss=init_loss,
        nbeta=nbeta,
        loss_trace=loss_trace.numpy(),
        burnin=burnin,
        config=config,
        compile_mode=compile_mode,
        amp=getattr(config, "amp", None),
    )


def result_from_trace(trace, init_loss: float, config) -> LLCResult:
    """LLCResult from a sampler's trace (``loss``, ``nbeta``, ``burnin``, optional ``compile_mode``) and L_n(w*)."""
    return llc_result(trace.loss, init_loss, trace.nbeta, trace.burnin, config,
                      getattr(trace, "compile_mode", "eager"))


def initial_loss(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096) -> float:
    """L_n(w*), the full-data loss at the centre; FloatingPointError if it is not finite."""
    with torch.no_grad():
        value = float(full_data_loss(loss_fn, w_star[None], x, y, eval_batch_size)[0])
    check_initial_loss(value)
    return value


def check_initial_loss(value: float) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"L_n(w*) is not finite ({value}); cannot estimate the LLC there")
