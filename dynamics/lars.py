"""LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman & Ginsburg 2017, Eq. 6).

For every parameter tensor w with gradient g, weight decay λ, trust coefficient η,
momentum μ and learning rate lr (docs/basis_decomposition.md#lars):

    ρ = η ‖w‖ / (‖g‖ + λ‖w‖ + ε)           trust ratio, when ‖w‖ > 0 and ‖g‖ > 0; else no scaling
    d = ρ (g + λ w)                         (d = g when a norm is 0)
    v ← d          at the first step,  v ← μ v + d  after      (PyTorch's SGD momentum convention)
    w ← w − lr · v

This is the update of the LARS the original scripts import (lightning-flash's
``flash.core.optimizers.LARS``), with the trust ratio applied at every weight decay,
λ = 0 included. Flash and timm's ``timm.optim.Lars`` skip the ratio when λ = 0 (timm
unless ``always_adapt``), so the step silently becomes plain momentum SGD; every
original script ran λ = 1e-4, where all three agree, and the ratio is what makes the
step size relative (lr·η per unit ‖w‖), which the basis experiments rely on. timm's
``always_adapt`` variant also differs at ‖w‖ = 0 or ‖g‖ = 0 (ρ = 1 with the decay
term kept), hence this small module instead of a library optimizer.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from core import checks

TRUST_COEFFICIENT = 1e-3  # flash's default η, used by every original script
EPS = 1e-8  # flash's ε


def trust_ratio(w: Tensor, g: Tensor, weight_decay: float, trust_coefficient: float = TRUST_COEFFICIENT,
                eps: float = EPS) -> Tensor:
    """ρ = η ‖w‖ / (‖g‖ + λ‖w‖ + ε), or 1 where ‖w‖ = 0 or ‖g‖ = 0 (0-dim tensor)."""
    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
    rho = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    return torch.where((w_norm > 0) & (g_norm > 0), rho, torch.ones_like(rho))


def lars_direction(w: Tensor, g: Tensor, weight_decay: float, trust_coefficient: float = TRUST_COEFFICIENT,
                   eps: float = EPS) -> Tensor:
    """d = ρ (g + λ w) when both norms are positive, else g (module docstring)."""
    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
    scaled = trust_ratio(w, g, weight_decay, trust_coefficient, eps) * (g + weight_decay * w)
    return torch.where((w_norm > 0) & (g_norm > 0), scaled, g)


class LARS(Optimizer):
    """The original scripts' LARS, with the trust ratio at every weight decay (module docstring).

    Args:
        params: parameters or param groups.
        lr: learning rate (> 0).
        momentum: μ (>= 0).
        weight_decay: λ (>= 0); param groups may set their own.
        trust_coefficient: η (> 0).
        eps: ε in the ratio's denominator.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 trust_coefficient: float = TRUST_COEFFICIENT, eps: float = EPS):
        checks.number("lr", lr, lo=0, strict=True)
        checks.number("momentum", momentum, lo=0)
        checks.number("weight_decay", weight_decay, lo=0)
        checks.number("trust_coefficient", trust_coefficient, lo=0, strict=True)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = lars_direction(p, p.grad, group["weight_decay"], group["trust_coefficient"], group["eps"])
                if group["momentum"] != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                    d = state["momentum_buffer"]
                p.add_(d, alpha=-group["lr"])
        return loss
