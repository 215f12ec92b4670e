"""Empirical neural tangent kernel Gram matrices, and the observables of a Gram matrix.

For a model f(w, x) with P parameters the empirical NTK is

    K[i, j, a, b] = Σ_p ∂f_a(w, x_i)/∂w_p · ∂f_b(w, x'_j)/∂w_p,

the Gram matrix of the per-sample output Jacobians J (N, O, P). Three ways to compute it:

* ``structured`` (MLP-type models): when every parameter belongs to an ``nn.Linear``
  applied once per forward to (N, fan_in) inputs, the per-sample gradient of layer l is
  the outer product b_i a_iᵀ of its backpropagated signal b_i = ∂f/∂z_l (z_l the layer's
  output) and its input a_i, so

      K = Σ_l (A_l A'_lᵀ + 1[bias]) ⊙ (B_l B'_lᵀ)

  (neural-tangents' "structured derivatives"). One forward and O backward passes over
  the batch give every A_l and B_l; J is never formed.
* ``jacobian``: J from ``vmap(jacrev)`` over samples, contracted per parameter tensor
  (chunked over samples to bound memory).
* ``ntvp``: NTK-vector products K v = J (J'ᵀ v) by ``vjp`` then ``jvp``, vmapped over the
  basis vectors; memory O(P) per vector, for models too wide to hold J.

``auto`` takes ``structured`` where it applies, else ``jacobian`` when J fits in
``memory_budget`` bytes, else ``ntvp``. All three agree to float64 precision
(tests/test_ntk.py checks them against explicit per-sample gradients).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

NTK_METHODS = ("auto", "structured", "jacobian", "ntvp")
DEFAULT_MEMORY_BUDGET = 2**30  # bytes of Jacobian the ``auto`` method may hold


class NotStructuredError(ValueError):
    """The model is not a composition of per-sample ``nn.Linear`` layers (``structured`` does not apply)."""


def _linear_owners(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, tuple[bool, bool]]:
    """Linear module name -> (weight in params, bias in params); NotStructuredError if a param is elsewhere."""
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    owners: dict[str, list[bool]] = {}
    for key in params:
        module, _, leaf = key.rpartition(".")
        if module not in linears or leaf not in ("weight", "bias"):
            raise NotStructuredError(f"parameter {key!r} does not belong to an nn.Linear")
        owners.setdefault(module, [False, False])[leaf == "bias"] = True
    return {name: tuple(flags) for name, flags in owners.items()}


def _factors(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, owners) -> tuple[int, list]:
    """Per linear layer: inputs A (N, fan_in) and signals B (O, N, fan_out), from one forward and O backwards."""
    n = x.shape[0]
    records: dict[str, tuple[Tensor, Tensor]] = {}
    modules = dict(model.named_modules())

    def hook(name):
        def fn(module, inputs, output):
            a = inputs[0]
            if name in records:
                raise NotStructuredError(f"layer {name!r} is applied more than once per forward")
            if a.dim() != 2 or a.shape[0] != n:
                raise NotStructuredError(f"layer {name!r} sees input of shape {tuple(a.shape)}, not (N={n}, fan_in)")
            tap = torch.zeros_like(output, requires_grad=True)  # z_l + 0: ∂f/∂tap = ∂f/∂z_l
            records[name] = (a.detach(), tap)
            return output + tap
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in owners]
    try:
        with torch.enable_grad():
            out = functional_call(model, {k: v.detach() for k, v in params.items()}, (x,))
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(owners) - set(records))
    if missing:
        raise NotStructuredError(f"layers {missing} were not called in the forward pass")
    out = out.reshape(n, -1)  # (N, O)
    num_out = out.shape[1]
    names = list(owners)
    taps = [records[name][1] for name in names]
    signals = [[] for _ in names]
    for o in range(num_out):
        grads = torch.autograd.grad(out[:, o].sum(), taps, retain_graph=o < num_out - 1, allow_unused=True)
        for k, g in enumerate(grads):
            signals[k].append(torch.zeros_like(taps[k]) if g is None else g)
    layers = [(records[name][0], torch.stack(signals[k]), *owners[name]) for k, name in enumerate(names)]
    return num_out, layers


def _ntk_structured(model, params, x1, x2) -> Tensor:
    owners = _linear_owners(model, params)
    num_out, f1 = _factors(model, params, x1, owners)
    _, f2 = (num_out, f1) if x2 is None else _factors(model, params, x2, owners)
    n, m = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    K = torch.zeros(n, m, num_out, num_out, dtype=x1.dtype, device=x1.device)
    for (a1, b1, has_w, has_b), (a2, b2, _, _) in zip(f1, f2):
        inputs = (a1 @ a2.T if has_w else torch.zeros(n, m, dtype=a1.dtype, device=a1.device)) + float(has_b)  # (N, M)
        signals = torch.einsum("anu,bmu->nmab", b1, b2)  # (N, M, O, O)
        K += inputs[:, :, None, None] * signals
    return K


def _per_sample_jacobian(model, params, x) -> dict[str, Tensor]:
    """{name: (N, O, *shape)}: ∂f_a(w, x_i)/∂w by vmap(jacrev) over single samples."""
    def f_single(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(-1)  # (O,)
    return vmap(jacrev(f_single), in_dims=(None, 0))(dict(params), x)


def _ntk_jacobian(model, params, x1, x2, chunk_size) -> Tensor:
    x2s = x1 if x2 is None else x2
    rows = []
    for i in range(0, x1.shape[0], chunk_size):
        J1 = _per_sample_jacobian(model, params, x1[i:i + chunk_size])
        cols = []
        for j in range(0, x2s.shape[0], chunk_size):
            J2 = J1 if (x2 is None and i == j) else _per_sample_jacobian(model, params, x2s[j:j + chunk_size])
            cols.append(sum(torch.einsum("iap,jbp->ijab", J1[k].flatten(2), J2[k].flatten(2)) for k in J1))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)


def _ntk_ntvp(model, params, x1, x2, chunk_size) -> Tensor:
    x2s = x1 if x2 is None else x2
    params = {k: v.detach() for k, v in params.items()}

    def f1(p):
        return functional_call(model, p, (x1,)).reshape(x1.shape[0], -1)  # (N, O)

    def f2(p):
        return functional_call(model, p, (x2s,)).reshape(x2s.shape[0], -1)  # (M, O)

    out2, vjp_fn = vjp(f2, params)
    m, num_out = out2.shape

    def column(v):  # v (M, O) -> K v (N, O)
        (u,) = vjp_fn(v)
        return jvp(f1, (params,), (u,))[1]

    basis = torch.eye(m * num_out, dtype=out2.dtype, device=out2.device).reshape(m * num_out, m, num_out)
    cols = torch.cat([vmap(column)(basis[s:s + chunk_size]) for s in range(0, m * num_out, chunk_size)])  # (M·O, N, O)
    return cols.reshape(m, num_out, x1.shape[0], num_out).permute(2, 0, 3, 1)  # (N, M, O, O)


def structured_applies(model: nn.Module, params: Mapping[str, Tensor]) -> bool:
    """True if every parameter in ``params`` is an ``nn.Linear``'s weight or bias (checked again in the forward)."""
    try:
        _linear_owners(model, params)
    except NotStructuredError:
        return False
    return True


def empirical_ntk(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x1: Tensor,
    x2: Tensor | None = None,
    method: str = "auto",
    chunk_size: int = 64,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """The empirical NTK Gram matrix between ``x1`` and ``x2`` (``x1`` itself when None).

    Args:
        model: architecture; f(w, x) = functional_call(model, params, (x,)). It must treat
            samples independently (no batch statistics).
        params: the parameters to differentiate, {name: tensor}; others stay at the module's values.
        x1: (N, ...) inputs.
        x2: (M, ...) inputs, or None for x1.
        method: one of ``NTK_METHODS`` (see the module docstring).
        chunk_size: samples per vmapped Jacobian block (``jacobian``) or basis vectors per
            vmapped batch (``ntvp``).
        memory_budget: bytes of Jacobian ``auto`` allows before choosing ``ntvp``.

    Returns:
        (N, M) when f returns (N,) outputs, else (N, M, O, O) for (N, O) outputs.

    Raises:
        ValueError: unknown method or chunk_size < 1.
        NotStructuredError: ``method='structured'`` on a model it does not apply to.
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {NTK_METHODS}; got {method!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    with torch.no_grad():
        out = functional_call(model, dict(params), (x1[:1],))
    scalar, num_out = out.dim() == 1, (1 if out.dim() == 1 else out.shape[-1])
    chosen = method
    if method == "auto":
        num_params = sum(p.numel() for p in params.values())
        jac_bytes = (x1.shape[0] + (0 if x2 is None else x2.shape[0])) * num_out * num_params * x1.element_size()
        chosen = ("structured" if structured_applies(model, params)
                  else "jacobian" if jac_bytes <= memory_budget else "ntvp")
    if chosen == "structured":
        try:
            K = _ntk_structured(model, params, x1, x2)
        except NotStructuredError:
            if method != "auto":
                raise
            K = _ntk_jacobian(model, params, x1, x2, chunk_size)
    elif chosen == "jacobian":
        K = _ntk_jacobian(model, params, x1, x2, chunk_size)
    else:
        K = _ntk_ntvp(model, params, x1, x2, chunk_size)
    return K[:, :, 0, 0] if scalar else K


def kernel_observables(K: Tensor, y: Tensor, K0: Tensor | None = None, top_k: int = 10) -> dict:
    """Scalar summaries of a scalar-output Gram matrix K (n, n) on labels y (n,), in float64.

    Returns a dict with
        norm: mean(K²), change: mean((K − K0)²), rel_change: ||K − K0||_F / ||K0||_F (with K0),
        yKy: yᵀ K y, yKinvy: (y/n)ᵀ K⁺ (y/n) (pseudo-inverse over eigenvalues > n·eps·λ_max, so a
        rank-deficient kernel such as the perceptron's X Xᵀ/d stays finite),
        alignment: yᵀ K y / (||K||_F ||y||²) (kernel-target alignment), trace, and
        eigenvalues: the ``top_k`` largest eigenvalues, descending.
    """
    if K.dim() != 2 or K.shape[0] != K.shape[1] or y.shape != K.shape[:1]:
        raise ValueError(f"K must be (n, n) and y (n,); got K {tuple(K.shape)} and y {tuple(y.shape)}")
    K, y = K.double(), y.double()
    n = K.shape[0]
    evals, evecs = torch.linalg.eigh(0.5 * (K + K.T))
    keep = evals > n * torch.finfo(torch.float64).eps * evals[-1].clamp_min(0)
    proj = evecs.T @ (y / n)
    fro = torch.linalg.norm(K)
    out = {
        "norm": float((K**2).mean()),
        "yKy": float(y @ K @ y),
        "yKinvy": float((proj[keep] ** 2 / evals[keep]).sum()),
        "alignment": float(y @ K @ y / (fro * (y @ y))) if fro > 0 else math.nan,
        "trace": float(K.trace()),
        "eigenvalues": evals.flip(0)[:top_k].tolist(),
    }
    if K0 is not None:
        K0 = K0.double()
        out["change"] = float(((K - K0) ** 2).mean())
        out["rel_change"] = float(torch.linalg.norm(K - K0) / torch.linalg.norm(K0))
    return out
