"""Restricted λ̂: sample only some coordinates of w, the rest held at w*.

With a boolean mask m over the flat parameters (P,), the restricted loss of the
sampled coordinates v (K,) is L(w* with w*[m] replaced by v); its λ̂ is the LLC
of that sub-problem (the "λ̂ of a layer" when m covers one layer's parameters).
``param_mask`` names what to sample:

* a list, tuple or set of parameter names (``model.named_parameters()``), or a
  dict of names to ``True`` (every entry of those parameters);
* a dict of names to boolean tensors of the parameter's shape (those entries).
"""
from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor, nn

from core import checks
from core.types import FlatLoss

ParamMask = Union[Mapping[str, Union[bool, Tensor]], list, tuple, set, frozenset]


def flat_param_mask(model: nn.Module, param_mask: ParamMask, device: torch.device | None = None) -> Tensor:
    """Boolean mask (P,) over the flattened parameters, in ``named_parameters()`` order.

    Raises:
        ValueError: an unknown name, a mask of the wrong shape or dtype, or a
            mask that selects no coordinate or every coordinate.
    """
    named = dict(model.named_parameters())
    if isinstance(param_mask, Mapping):
        items = dict(param_mask)
    elif isinstance(param_mask, (list, tuple, set, frozenset)):
        items = {name: True for name in param_mask}
    else:
        raise ValueError(
            "param_mask must be None, a list/set of parameter names, or a dict of names to True or "
            f"boolean masks; got {type(param_mask).__name__}"
        )
    unknown = [k for k in items if k not in named]
    if unknown:
        raise ValueError(f"param_mask names parameters the model does not have: {unknown}; "
                         f"its parameters are {list(named)}")
    parts = []
    for name, p in named.items():
        sel = items.get(name, False)
        if isinstance(sel, bool):
            parts.append(torch.full((p.numel(),), sel, dtype=torch.bool))
            continue
        if not (isinstance(sel, Tensor) and sel.dtype == torch.bool and sel.shape == p.shape):
            raise ValueError(
                f"param_mask[{name!r}] must be True/False or a boolean tensor of shape {tuple(p.shape)}; "
                f"got {type(sel).__name__}"
                + (f" of dtype {sel.dtype} and shape {tuple(sel.shape)}" if isinstance(sel, Tensor) else "")
            )
        parts.append(sel.detach().reshape(-1).cpu())
    mask = torch.cat(parts)
    if not bool(mask.any()):
        raise ValueError("param_mask selects no coordinate: nothing would be sampled")
    if bool(mask.all()):
        raise ValueError("param_mask selects every coordinate; pass param_mask=None for the full λ̂")
    return mask if device is None else mask.to(device)


def restrict_loss(loss: FlatLoss, w_star: Tensor, mask: Tensor) -> tuple[FlatLoss, Tensor]:
    """The loss of the sampled coordinates v (K,) and their centre v* = w*[mask] (K,).

    loss_v(v, x, y) = loss(w* with w*[mask] = v, x, y); index_put is out of place,
    so vmap and autograd act on v alone and w* stays fixed.
    """
    idx = mask.to(w_star.device).nonzero().squeeze(1)  # (K,)
    base = w_star.detach()

    def loss_v(v: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return loss(base.index_put((idx,), v), x, y)

    return loss_v, base[idx].clone()


def layer_groups(model: nn.Module, by: str = "module") -> dict[str, list[str]]:
    """Parameter names grouped per layer.

    by='module': by owning module (``'0.weight'`` and ``'0.bias'`` -> ``'0'``);
    by='parameter': one group per parameter tensor.
    """
    checks.one_of("by", by, ("module", "parameter"))
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        key = name if by == "parameter" else (name.rpartition(".")[0] or name)
        groups.setdefault(key, []).append(name)
    return groups


def estimate_llc_per_layer(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    by: str = "module",
    **kwargs,
) -> dict:
    """λ̂ of each layer: one restricted estimate per group of :func:`layer_groups`.

    Every estimate uses the same seed and settings (``kwargs`` of
    ``llc.estimate.estimate_llc``); a model with one group returns its full λ̂.
    Returns {group name: LLCResult}.
    """
    from llc.estimate import estimate_llc  # llc.estimate imports this module

    if "param_mask" in kwargs:
        raise ValueError("estimate_llc_per_layer sets param_mask itself; do not pass it")
    groups = layer_groups(model, by)
    if len(groups) == 1:
        (name,) = groups
        return {name: estimate_llc(model, loss_fn, data, **kwargs)}
    return {name: estimate_llc(model, loss_fn, data, param_mask=names, **kwargs) for name, names in groups.items()}
