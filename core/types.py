"""Types of the functions of a flat parameter vector that the samplers and the dynamics tools take.

A model's parameters are flattened into one vector w of P numbers
(``llc.estimate.flat_model_for_module`` builds these functions from an ``nn.Module``),
so Hessians, Jacobians and SGLD chains act on plain tensors and vmap over chains.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

FlatLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # (w (P,), x (B, ...), y (B, ...)) -> batch loss ()
FlatModel = Callable[[Tensor, Tensor], Tensor]  # (w (P,), x (N, ...)) -> outputs (N, O)
