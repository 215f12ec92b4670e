"""A fused flat loss for stacks of ``nn.Linear`` and elementwise activations.

For small models the generic flat loss (``functional_call`` of the module, vmapped
over chains) is dominated by per-step overhead: building the parameter dict,
module dispatch, and vmap's batching rules for every op. A model that is just a
stack of Linear layers and elementwise activations (the DLNs, the ReLU MLPs of
the MALA and rescaling experiments, the chaos MLP) needs none of that: each
layer's weight is a slice of the flat vector w, so for all C chains at once the
flat matrix W (C, P) holds the stacked weights (C, out, in), and the forward is
one ``baddbmm`` per layer, with a single backward through it.

:func:`fused_flat_loss` returns a :class:`FusedFlatLoss`, which is both

* the per-chain ``FlatLoss`` (w (P,), x (B, ...), y (B, ...)) -> () that the chain
  driver vmaps (matrix products on views of w: no functional_call), and
* ``.batched(W (C, P), x (C, B, ...), y (C, B, ...)) -> (C,)``, the bmm forward
  for every chain without vmap, for a driver that calls it directly.

Both equal the generic path to floating-point rounding (tests/test_fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.nn.utils import parametrize

from llc import fused_grad
from models.chaos_nets import MLP as ChaosMLP
from models.dln import DeepLinearNetwork
from models.relu_mlp import ReLUMLP

# Parameter-free activations that act entry by entry, so they apply unchanged to (C, B, H).
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Identity, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Softplus)
# Module classes whose forward is exactly ``self.layers(x)`` (True: ``x.flatten(1)`` first).
# Exact types only: a subclass may override forward.
STACK_CLASSES: dict[type, bool] = {DeepLinearNetwork: False, ReLUMLP: False, ChaosMLP: True}
PATHS = ("fused", "generic")


@dataclass(frozen=True)
class LinearSlice:
    """Where one Linear's weight (out, in) and bias (out,) sit in the flat vector (bias_at None: no bias)."""

    weight_at: int
    out_features: int
    in_features: int
    bias_at: int | None


@dataclass(frozen=True)
class LinearStack:
    """A model as a sequence of LinearSlice and activation modules, with the flat vector's length."""

    ops: tuple[LinearSlice | nn.Module, ...]
    flatten: bool
    num_params: int


def _has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _global_hooks() -> bool:
    m = nn.modules.module
    return any(getattr(m, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def linear_stack(model: nn.Module) -> LinearStack | None:
    """The model as a LinearStack if it qualifies for the fused path, else None.

    Qualifies: an ``nn.Sequential`` (or a class of STACK_CLASSES wrapping one as
    ``layers``) whose children are all ``nn.Linear`` or ELEMENTWISE activations, with
    no buffers, hooks or parametrizations, and every parameter inside a Linear.
    Offsets follow ``model.named_parameters()``, the order of the generic flat vector.
    """
    if type(model) is nn.Sequential:
        seq, flatten = model, False
    elif type(model) in STACK_CLASSES and type(getattr(model, "layers", None)) is nn.Sequential:
        seq, flatten = model.layers, STACK_CLASSES[type(model)]
    else:
        return None
    if _global_hooks() or any(True for _ in model.buffers()):
        return None
    if any(_has_hooks(m) or parametrize.is_parametrized(m) for m in model.modules()):
        return None
    offsets, at = {}, 0
    for p in model.parameters():  # deduplicated, in named_parameters order
        offsets[id(p)] = at
        at += p.numel()
    ops, used = [], set()
    for child in seq:
        if type(child) is nn.Linear:
            w, b = child.weight, child.bias
            ops.append(LinearSlice(offsets[id(w)], child.out_features, child.in_features,
                                   None if b is None else offsets[id(b)]))
            used.update({id(w)} | (set() if b is None else {id(b)}))
        elif type(child) in ELEMENTWISE:
            ops.append(child)
        else:
            return None
    if not any(isinstance(op, LinearSlice) for op in ops) or used != set(offsets):
        return None
    return LinearStack(tuple(ops), flatten, at)


def stack_forward(stack: LinearStack, w: Tensor, x: Tensor) -> Tensor:
    """One chain's outputs: w (P,), x (B, ...) -> (B, out), on views of w.

    Feature-major like :func:`stack_forward_batched`: h (features, B), h <- W h + b;
    under the driver's vmap each product becomes the same fast bmm.
    """
    h = (x.flatten(1) if stack.flatten else x).T  # (in, B)
    for op in stack.ops:
        if isinstance(op, LinearSlice):
            weight = w[op.weight_at:op.weight_at + op.out_features * op.in_features].view(
                op.out_features, op.in_features)  # (out, in)
            if op.bias_at is None:
                h = weight @ h  # (out, B)
            else:
                h = torch.addmm(w[op.bias_at:op.bias_at + op.out_features].unsqueeze(1), weight, h)
        else:
            h = op(h)
    return h.T  # (B, out)


def stack_forward_batched(stack: LinearStack, w: Tensor, x: Tensor) -> Tensor:
    """Every chain's outputs: w (C, P), x (C, B, ...) -> (C, B, out); one (b)addbmm per layer.

    Activations are kept feature-major, h (C, features, B), so each product is
    W (C, out, in) @ h (C, in, B) with the long batch dimension last: on CPU that
    shape runs several times faster than h (C, B, in) @ W^T for narrow layers.
    """
    c = w.shape[0]
    h = (x.flatten(2) if stack.flatten else x).transpose(1, 2)  # (C, in, B)
    for op in stack.ops:
        if isinstance(op, LinearSlice):
            weight = w[:, op.weight_at:op.weight_at + op.out_features * op.in_features].view(
                c, op.out_features, op.in_features)  # (C, out, in)
            if op.bias_at is None:
                h = torch.bmm(weight, h)  # (C, out, B)
            else:
                bias = w[:, op.bias_at:op.bias_at + op.out_features].unsqueeze(2)  # (C, out, 1)
                h = torch.baddbmm(bias, weight, h)
        else:
            h = op(h)
    return h.transpose(1, 2)  # (C, B, out)


def _is_default_ce(loss_fn) -> bool:
    if loss_fn is F.cross_entropy:
        return True
    return (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None and loss_fn.reduction == "mean"
            and loss_fn.label_smoothing == 0.0)


def _is_mse(loss_fn) -> bool:
    return loss_fn is F.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean")


def batched_loss_of(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-chain mean loss (C, B, out), (C, B, ...) -> (C,) for a mean loss_fn(out, y) -> ().

    MSE and default cross-entropy (function or module) are written batched; any
    other loss is vmapped over the chain dimension (the model part stays fused).
    """
    generic = vmap(loss_fn)
    if _is_mse(loss_fn):
        def mse(out: Tensor, y: Tensor) -> Tensor:
            if out.shape != y.shape:  # broadcasting MSE: keep loss_fn's own semantics
                return generic(out, y)
            return (out - y).square().mean(dim=tuple(range(1, out.ndim)))

        return mse
    if _is_default_ce(loss_fn):
        ignore = -100 if loss_fn is F.cross_entropy else loss_fn.ignore_index

        def ce(out: Tensor, y: Tensor) -> Tensor:
            c, b = out.shape[:2]
            if out.ndim != 3:  # (C, B, K, d...) spatial logits: not a Linear stack's output
                return generic(out, y)
            if y.is_floating_point():  # class probabilities: every row counts
                return F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(c, b).mean(1)
            per = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none", ignore_index=ignore)
            keep = y != ignore  # (C, B): reduction="mean" averages over the rows not ignored
            return per.view(c, b).sum(1) / keep.sum(1)

        return ce
    return generic


class FusedFlatLoss:
    """Flat loss of a LinearStack: call it per chain, or ``.batched`` for all chains.

    Attributes:
        stack: the model's layout in the flat vector.
        loss_fn: the mean loss(outputs, y) it composes with.
        path: "fused" (the generic flat loss has "generic").
    """

    path = "fused"

    def __init__(self, stack: LinearStack, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.stack, self.loss_fn = stack, loss_fn
        self._batched_loss = batched_loss_of(loss_fn)
        kind = "mse" if _is_mse(loss_fn) else "ce" if _is_default_ce(loss_fn) else None
        self._kind = kind if fused_grad.supports(stack, kind) else None
        self._ignore = getattr(loss_fn, "ignore_index", -100)

    def __call__(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """w (P,), x (B, ...), y (B, ...) -> () mean loss of one chain."""
        return self.loss_fn(stack_forward(self.stack, w, x), y)

    def batched(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """w (C, P), x (C, B, ...), y (C, B, ...) -> (C,) each chain's mean loss, without vmap."""
        return self._batched_loss(stack_forward_batched(self.stack, w, x), y)

    def takes_row_views(self, batch_size: int) -> bool:
        """Whether value_and_grad gives the same numbers on strided views of x's and y's rows.

        True where it copies x into its own layout and reads y entry by entry (the
        collapsed Linear-only backward); elsewhere a bmm reads x's rows in place, and
        BLAS may round differently with another row stride.
        """
        return self._kind is not None and fused_grad.collapses(self.stack, batch_size)

    def value_and_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Each chain's loss (C,) and gradient (C, P) at w (C, P), x (C, B, ...), y (C, B, ...).

        The hand-written backward of llc.fused_grad where it applies (MSE or hard-label
        cross-entropy, activations with closed-form derivatives), else autograd on ``batched``.
        """
        if self._kind is not None:
            got = fused_grad.value_and_grad(self.stack, self._kind, w, x, y, self._ignore)
            if got is not None:
                return got
        with torch.enable_grad():
            wg = w.detach().requires_grad_(True)
            loss = self.batched(wg, x, y)
            (g,) = torch.autograd.grad(loss.sum(), wg)
        return loss.detach(), g


def fused_flat_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> FusedFlatLoss | None:
    """The fused flat loss of ``model`` composed with ``loss_fn``, or None if the model does not qualify."""
    stack = linear_stack(model)
    if stack is None:
        return None
    return FusedFlatLoss(stack, loss_fn)


def batched_or_vmap(loss_fn) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The all-chains loss (C, P), (C, B, ...), (C, B, ...) -> (C,) a chain driver should call.

    ``loss_fn.batched`` where the flat loss has one (the fused path), else vmap(loss_fn).
    """
    batched = getattr(loss_fn, "batched", None)
    return batched if callable(batched) else vmap(loss_fn)


__all__ = ["ELEMENTWISE", "STACK_CLASSES", "PATHS", "LinearSlice", "LinearStack", "linear_stack",
           "stack_forward", "stack_forward_batched", "batched_loss_of", "FusedFlatLoss", "fused_flat_loss",
           "batched_or_vmap"]
