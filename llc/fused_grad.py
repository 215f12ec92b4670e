"""Hand-written backward for a fused Linear stack: every chain's loss and gradient, no autograd.

For a LinearStack (llc.fused) with activations whose derivative follows from their
output, and MSE or hard-label cross-entropy, the gradient of each chain's mean loss
is a few more bmm's: with g the gradient at a layer's output (C, out, B) and h its
input (C, in, B), ∂W = g hᵀ, ∂b = Σ_B g, and the gradient at h is Wᵀ g. Skipping
autograd's graph saves its per-node bookkeeping, which dominates tiny models.
A stack of Linear layers alone (the DLNs) collapses further: the forward is one product
of the weights' product with x, and the gradient needs one more product over the batch
(:func:`_linear_value_and_grad`). :func:`value_and_grad` returns None where this does not
apply (the caller then uses autograd on ``FusedFlatLoss.batched``); tests/test_fused.py
checks it against autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_linear(op) -> bool:
    """A LinearSlice of llc.fused (duck-typed: llc.fused imports this module)."""
    return hasattr(op, "weight_at")


def _backward_through(act: nn.Module, out: Tensor, g: Tensor) -> Tensor:
    """g ⊙ ∂act/∂input, from the activation's output alone; g (a temporary of ours) is overwritten.

    ReLU multiplies by sign(out), which is 1{out > 0} for out >= 0: the same product as
    g * (out > 0).to(dtype), without the bool mask (bool kernels are several times slower
    than float ones on CPU, and a cast adds a pass).
    """
    if type(act) is nn.Identity:
        return g
    if type(act) is nn.ReLU:
        return g.mul_(out.sign())
    if type(act) is nn.Tanh:
        return g.mul_(1 - out * out)
    if type(act) is nn.Sigmoid:
        return g.mul_(out * (1 - out))
    if type(act) is nn.LeakyReLU:  # slope > 0 (checked in supports): sign(out) = sign(input)
        return torch.where(out > 0, g, g * act.negative_slope)
    if type(act) is nn.ELU:  # α e^x = out + α for x <= 0, and out > 0 iff x > 0
        return torch.where(out > 0, g, g * (out + act.alpha))
    raise TypeError(f"no closed-form derivative for {type(act).__name__}")


def _forward_in_place(act: nn.Module, h: Tensor) -> Tensor:
    """act(h) written over h, a fresh matmul output no one else holds (same kernels as act(h))."""
    if type(act) is nn.Identity:
        return h
    if type(act) is nn.ReLU:
        return torch.relu_(h)
    if type(act) is nn.Tanh:
        return torch.tanh_(h)
    if type(act) is nn.Sigmoid:
        return torch.sigmoid_(h)
    if type(act) is nn.LeakyReLU:
        return F.leaky_relu_(h, act.negative_slope)
    if type(act) is nn.ELU:
        return F.elu_(h, act.alpha)
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
        return d.square().mean((1, 2)), d.mul_(2.0 / (k * b))
    if y.is_floating_point() or y.shape != (c, b):  # class probabilities: not covered
        return None
    keep = y != ignore_index  # (C, B): reduction="mean" averages over the kept rows
    label = torch.where(keep, y, 0).unsqueeze(1)  # (C, 1, B)
    logp = F.log_softmax(out, dim=1)  # (C, K, B)
    nkeep = keep.sum(1).to(out.dtype)  # (C,)
    loss = -(logp.gather(1, label).squeeze(1) * keep).sum(1) / nkeep
    g = logp.exp().scatter_add_(1, label, torch.full_like(label, -1, dtype=out.dtype))  # softmax - onehot
    return loss, g.mul_(keep.unsqueeze(1) / nkeep.view(c, 1, 1))


def collapses(stack, batch_size: int) -> bool:
    """Whether :func:`value_and_grad` takes the collapsed form: Linear (and Identity) layers only,
    with input and output narrower than the batch, so the products over the batch shrink to two."""
    linears = [op for op in stack.ops if _is_linear(op)]
    if any(not _is_linear(op) and type(op) is not nn.Identity for op in stack.ops):
        return False
    return max(linears[0].in_features, linears[-1].out_features) < batch_size


def _linear_value_and_grad(stack, kind: str, w: Tensor, x: Tensor, y: Tensor,
                           ignore_index: int) -> tuple[Tensor, Tensor] | None:
    """value_and_grad of a stack of Linear layers only, with two products over the batch.

    With h_l = W_l h_(l-1) + b_l the output is A_L x + a_L, A_l = W_l A_(l-1) (A_0 = I),
    a_l = W_l a_(l-1) + b_l (a_0 = 0). With g = ∂loss/∂out (C, K, B), G = g xᵀ and s = g 1,
    and R_l = W_L ... W_(l+1) (R_L = I): ∂W_l = R_lᵀ (G A_(l-1)ᵀ + s a_(l-1)ᵀ), ∂b_l = R_lᵀ s.
    Everything but the forward A_L x and G is a product of (out, in)-sized matrices; the
    result equals the layer-by-layer backward to rounding (the products are associated
    differently), which tests/test_fused.py checks in float64.
    """
    c = w.shape[0]
    layers = [op for op in stack.ops if _is_linear(op)]
    weights = [w[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
        c, op.out_features, op.in_features) for op in layers]  # (C, out_l, in_l)
    biases = [None if op.bias_at is None else w[:, op.bias_at:op.bias_at + op.out_features].unsqueeze(2)
              for op in layers]  # (C, out_l, 1)
    prefix: list[tuple[Tensor | None, Tensor | None]] = [(None, None)]  # (A_(l-1), a_(l-1)); None: I, 0
    mat, vec = weights[0], biases[0]  # A_1 (C, out_1, in), a_1 (C, out_1, 1)
    for weight, bias in zip(weights[1:], biases[1:]):
        prefix.append((mat, vec))
        mat = torch.bmm(weight, mat)
        vec = bias if vec is None else (torch.bmm(weight, vec) if bias is None else torch.baddbmm(bias, weight, vec))
    # Feature-major and contiguous: both products over the batch then take BLAS's fast layouts
    # (with the transposed view of x, G = g x took several times longer on CPU).
    xt = (x.flatten(2) if stack.flatten else x).transpose(1, 2).contiguous()  # (C, in, B)
    k, b = mat.shape[1], xt.shape[2]
    if kind == "mse" and vec is None and y.shape == (c, b, k):
        # The residual in the product itself: d = A_L x - yᵀ, one kernel instead of bmm then sub.
        d = torch.baddbmm(y.transpose(1, 2), mat, xt, beta=-1)  # (C, K, B)
        loss, g = d.square().mean((1, 2)), d.mul_(2.0 / (k * b))
    else:
        out = torch.bmm(mat, xt) if vec is None else torch.baddbmm(vec, mat, xt)  # (C, K, B)
        got = _loss_and_output_grad(kind, out, y, ignore_index)
        if got is None:
            return None
        loss, g = got  # (C,), (C, K, B)
    big_g, s = torch.bmm(g, xt.transpose(1, 2)), g.sum(2, keepdim=True)  # (C, K, in), (C, K, 1)
    grad = torch.zeros_like(w)  # (C, P); shared layers accumulate
    rest = None  # R_l (C, K, out_l); None: the identity
    for i in range(len(layers) - 1, -1, -1):
        op, (mat, vec) = layers[i], prefix[i]
        q = big_g if mat is None else torch.bmm(big_g, mat.transpose(1, 2))  # g h_(l-1)ᵀ (C, K, out_(l-1))
        if vec is not None:
            q = torch.baddbmm(q, s, vec.transpose(1, 2))
        grad[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
            c, op.out_features, op.in_features).add_(q if rest is None else torch.bmm(rest.transpose(1, 2), q))
        if op.bias_at is not None:
            db = s if rest is None else torch.bmm(rest.transpose(1, 2), s)  # (C, out_l, 1)
            grad[:, op.bias_at:op.bias_at + op.out_features].add_(db.squeeze(2))
        rest = weights[i] if rest is None else torch.bmm(rest, weights[i])
    return loss, grad


def value_and_grad(stack, kind: str, w: Tensor, x: Tensor, y: Tensor,
                   ignore_index: int = -100) -> tuple[Tensor, Tensor] | None:
    """Each chain's mean loss (C,) and its gradient (C, P) at w (C, P), x (C, B, ...); None if not covered.

    A stack of Linear layers alone takes :func:`_linear_value_and_grad` (see :func:`collapses`).
    Otherwise layer by layer; per-step work is kept small for tiny models: activations after a
    Linear overwrite its fresh output, and the backward updates its own temporaries in place
    (the same values as out-of-place ops).
    """
    c = w.shape[0]
    if collapses(stack, x.shape[1]):
        with torch.no_grad():
            return _linear_value_and_grad(stack, kind, w, x, y, ignore_index)
    with torch.no_grad():
        h = (x.flatten(2) if stack.flatten else x).transpose(1, 2)  # (C, in, B)
        saved = []  # (op, weight or None, input to the op)
        fresh = False  # h is a matmul output of ours that no one else holds
        for op in stack.ops:
            if _is_linear(op):
                weight = w[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
                    c, op.out_features, op.in_features)
                saved.append((op, weight, h))
                if op.bias_at is None:
                    h = torch.bmm(weight, h)
                else:
                    h = torch.baddbmm(w[:, op.bias_at:op.bias_at + op.out_features].unsqueeze(2), weight, h)
                fresh = True
            else:
                # A second activation in a row would overwrite the first one's saved output.
                h = _forward_in_place(op, h) if fresh else op(h)
                fresh = False
                saved.append((op, None, h))  # the activation's output
        got = _loss_and_output_grad(kind, h, y, ignore_index)
        if got is None:
            return None
        loss, g = got  # (C,), (C, out, B); g is ours to overwrite
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
                    g = torch.bmm(weight.transpose(1, 2), g)  # (C, in, B), a new tensor
            else:
                g = _backward_through(op, h_in, g)
    return loss, grad
