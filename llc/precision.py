"""Mixed precision for the samplers' loss forward and backward (``amp``).

With ``amp`` = "bf16" or "fp16" the minibatch loss and its gradient run under
``torch.autocast(device_type, dtype)``: matmuls and convolutions in the low
precision, reductions such as ``mse_loss`` and ``cross_entropy`` in float32 (the
autocast op lists). The state w, the gradient autograd returns for it (the leaf's
dtype), the update, the noise, and the recorded loss stay in the run's dtype
(float32 or float64); the trace itself is float64. CPU autocast supports bfloat16
only, so "fp16" needs CUDA. Autocast leaves float64 tensors alone, so on a
float64 run amp changes nothing (a warning says so).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

AMP_CHOICES = (None, "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(value) -> None:
    """ValueError naming ``amp`` unless value is None, "bf16" or "fp16"."""
    if not (value is None or isinstance(value, str) and value in AMP_DTYPES):
        raise ValueError(f"amp must be one of {AMP_CHOICES}; got {value!r}")


def check_amp_device(amp, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """ValueError for amp="fp16" off CUDA (CPU autocast supports bfloat16 only); warn on float64."""
    check_amp(amp)
    if amp is not None and dtype == torch.float64:
        warnings.warn(f"amp={amp!r} on a float64 run changes nothing: torch.autocast casts float32 ops only",
                      RuntimeWarning, stacklevel=3)
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (CPU autocast supports bf16 only); got device "
                         f"{torch.device(device).type!r}: use amp='bf16' or None")


def autocast(amp, device: torch.device):
    """torch.autocast for amp on device's type, or a no-op context for amp=None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])
