"""Hand-written backward for a fused Linear stack: every chain's loss and gradient, no autograd.

For a LinearStack (llc.fused) with activations whose derivative follows from their
output, and MSE or hard-label cross-entropy, the gradient of each chain's mean loss
is a few more bmm's: with g the gradient at a layer's output (C, out, B) and h its
input (C, in, B), ∂W = g hᵀ, ∂b = Σ_B g, and the gradient at h is Wᵀ g. Skipping
autograd's graph saves its per-node bookkeeping, which dominates tiny models.
:func:`value_and_grad` returns None where this does not apply (the caller then uses
autograd on ``FusedFlatLoss.batched``); tests/test_fused.py checks it against autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_linear(op) -> bool:
    """A LinearSlice of llc.fused (duck-typed: llc.fused imports this module)."""
    return hasattr(op, "weight_at")


def _derivative(act: nn.Module, out: Tensor) -> Tensor | None:
    """∂act/∂input from the activation's output alone (also right after an in-place op), or None."""
    if type(act) is nn.Identity:
        return None
    if type(act) is nn.ReLU:
        return (out > 0).to(out.dtype)
    if type(act) is nn.Tanh:
        return 1 - out * out
    if type(act) is nn.Sigmoid:
        return out * (1 - out)
    if type(act) is nn.LeakyReLU:  # slope > 0 (checked in supports): sign(out) = sign(input)
        return torch.where(out > 0, torch.ones_like(out), torch.full_like(out, act.negative_slope))
    if type(act) is nn.ELU:  # α e^x = out + α for x <= 0, and out > 0 iff x > 0
        return torch.where(out > 0, torch.ones_like(out), out + act.alpha)
    raise TypeError(f"no closed-form derivative for {type(act).__name__}")


def supports(stack, loss_kind: str | None) -> bool:
    """Whether the hand-written backward covers this LinearStack and loss ("mse" or "ce")."""
    if loss_kind not in ("mse", "ce"):
        return False
    for op in stack.ops:
        if _is_linear(op):
            continue
        if getattr(op, "inplace", False):  # would overwrite a saved output
            return False
        if type(op) is nn.LeakyReLU and op.negative_slope > 0:
            continue
        if type(op) is nn.ELU and op.alpha > 0:
            continue
        if type(op) not in (nn.Identity, nn.ReLU, nn.Tanh, nn.Sigmoid):
            return False
    return True


def _loss_and_output_grad(kind: str, out: Tensor, y: Tensor, ignore_index: int) -> tuple[Tensor, Tensor] | None:
    """Per-chain mean loss (C,) and its gradient at the outputs out (C, K, B), or None."""
    c, k, b = out.shape
    if kind == "mse":
        if y.shape != (c, b, k):
            return None
        d = out - y.transpose(1, 2)  # (C, K, B)
        return d.square().mean((1, 2)), d * (2.0 / (k * b))
    if y.is_floating_point() or y.shape != (c, b):  # class probabilities: not covered
        return None
    keep = y != ignore_index  # (C, B): reduction="mean" averages over the kept rows
    label = torch.where(keep, y, 0).unsqueeze(1)  # (C, 1, B)
    logp = F.log_softmax(out, dim=1)  # (C, K, B)
    nkeep = keep.sum(1).to(out.dtype)  # (C,)
    loss = -(logp.gather(1, label).squeeze(1) * keep).sum(1) / nkeep
    g = logp.exp().scatter_add_(1, label, torch.full_like(label, -1, dtype=out.dtype))  # softmax - onehot
    return loss, g * (keep.unsqueeze(1) / nkeep.view(c, 1, 1))


def value_and_grad(stack, kind: str, w: Tensor, x: Tensor, y: Tensor,
                   ignore_index: int = -100) -> tuple[Tensor, Tensor] | None:
    """Each chain's mean loss (C,) and its gradient (C, P) at w (C, P), x (C, B, ...); None if not covered."""
    c = w.shape[0]
    with torch.no_grad():
        h = (x.flatten(2) if stack.flatten else x).transpose(1, 2)  # (C, in, B)
        saved = []  # (op, weight or None, input to the op)
        for op in stack.ops:
            if _is_linear(op):
                weight = w[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
                    c, op.out_features, op.in_features)
                saved.append((op, weight, h))
                if op.bias_at is None:
                    h = torch.bmm(weight, h)
                else:
                    h = torch.baddbmm(w[:, op.bias_at:op.bias_at + op.out_features].unsqueeze(2), weight, h)
            else:
                h = op(h)
                saved.append((op, None, h))  # the activation's output
        got = _loss_and_output_grad(kind, h, y, ignore_index)
        if got is None:
            return None
        loss, g = got  # (C,), (C, out, B)
        grad = torch.zeros_like(w)  # (C, P); shared layers accumulate
        first_linear = next(i for i, (op, _, _) in enumerate(saved) if _is_linear(op))
        for i in range(len(saved) - 1, first_linear - 1, -1):
            op, weight, h_in = saved[i]
            if _is_linear(op):
                grad[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
                    c, op.out_features, op.in_features).add_(torch.bmm(g, h_in.transpose(1, 2)))
                if op.bias_at is not None:
                    grad[:, op.bias_at:op.bias_at + op.out_features].add_(g.sum(2))
                if i > first_linear:
                    g = torch.bmm(weight.transpose(1, 2), g)  # (C, in, B)
            else:
                d = _derivative(op, h_in)
                if d is not None:
                    g = g * d
    return loss, grad
