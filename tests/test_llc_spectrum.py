"""tracking.llc_spectrum and expt_llc_curve's hessian_spectrum: top-k eigenvalues and SLQ density at checkpoints."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import load_experiment
from tests.test_llc_curve import run, tiny
from tests.test_preempt_experiments import assert_resumed_equals_uninterrupted, interrupted_then_resumed, llc_config
from tracking.llc_spectrum import (
    SpectrumConfig,
    hessian_spectrum,
    record_spectrum,
    training_loss,
    validate_hessian_spectrum,
)

DEFAULT = dict(every=None, top_k=5, method="lanczos", tol=1e-3, slq_probes=4, slq_steps=30, batch_size=512)


# --------------------------------------------------------------- the routine on a tiny MLP, against dense eigvalsh

@pytest.fixture(scope="module")
def mlp_problem():
    """A 4 -> 6 -> 3 tanh MLP (P = 51) in float64 with a random batch of 20: the dense Hessian is cheap and exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    return model, x, y


def dense(model, x, y, l2):
    """Eigenvalues (ascending) and trace of ∇²[CE + l2·Σ w²] by torch.func.hessian, independently of the HVP route."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = v[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y) + l2 * (v ** 2).sum()

    h = torch.func.hessian(loss)(w)  # (P, P)
    return torch.linalg.eigvalsh(h), h


@pytest.mark.parametrize("l2", [None, 0.05])
def test_lanczos_top_k_matches_dense_eigvalsh(mlp_problem, l2):
    model, x, y = mlp_problem
    cfg = SpectrumConfig(every=1, top_k=3, method="lanczos", tol=1e-8, slq_probes=0, slq_steps=1, batch_size=20)
    loss, w = training_loss(model, l2)
    spec = hessian_spectrum(loss, w, x, y, cfg, torch.Generator().manual_seed(0))
    eig, _ = dense(model, x, y, l2 or 0.0)
    assert spec["converged"] and len(spec["eigenvalues"]) == 3 and "slq_nodes" not in spec
    # A converged Ritz value lies within its residual (<= tol·|θ| = 1e-8·|θ|) of an eigenvalue of the symmetric H;
    # 1e-7 relative leaves room for the float64 rounding of the HVPs.
    torch.testing.assert_close(torch.tensor(spec["eigenvalues"], dtype=torch.float64), eig.flip(0)[:3],
                               rtol=1e-7, atol=1e-10)
    if l2:  # the penalty shifts every eigenvalue by exactly 2·l2
        base, _ = dense(model, x, y, 0.0)
        assert spec["eigenvalues"][0] == pytest.approx(float(base[-1]) + 2 * l2, rel=1e-7)


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(mlp_problem):
    model, x, y = mlp_problem
    cfg = SpectrumConfig(every=1, top_k=1, method="power", tol=1e-9, slq_probes=0, slq_steps=1, batch_size=20)
    loss, w = training_loss(model, None)
    spec = hessian_spectrum(loss, w, x, y, cfg, torch.Generator().manual_seed(1))
    eig, _ = dense(model, x, y, 0.0)
    top = float(eig[eig.abs().argmax()])
    assert spec["method"] == "power" and spec["converged"]
    # Stopped once the Rayleigh quotient changed by < 1e-9 relatively: at the gap ratio of this H the error is far
    # below 1e-5 (the change between iterations bounds the remaining geometric decay).
    assert spec["eigenvalues"][0] == pytest.approx(top, rel=1e-5)


def test_slq_density_is_a_quadrature_of_the_spectrum(mlp_problem):
    model, x, y = mlp_problem
    probes = 8
    cfg = SpectrumConfig(every=1, top_k=1, method="lanczos", tol=1e-6, slq_probes=probes, slq_steps=10,
                         batch_size=20)
    loss, w = training_loss(model, None)
    spec = hessian_spectrum(loss, w, x, y, cfg, torch.Generator().manual_seed(2))
    eig, h = dense(model, x, y, 0.0)
    nodes = torch.tensor(spec["slq_nodes"], dtype=torch.float64)  # (probes, steps)
    weights = torch.tensor(spec["slq_weights"], dtype=torch.float64)
    assert nodes.shape == weights.shape == (probes, 10)
    torch.testing.assert_close(weights.sum(1), torch.ones(probes, dtype=torch.float64))  # Gauss weights sum to 1
    slack = 1e-9 * float(eig.abs().max())  # Ritz values lie in [λ_min, λ_max] (Cauchy interlacing), up to rounding
    assert float(nodes.min()) >= float(eig[0]) - slack and float(nodes.max()) <= float(eig[-1]) + slack
    # P·moment(1) is the mean of vᵀHv over the Rademacher probes: Hutchinson, of exact SD sqrt(2 Σ_{i≠j} H_ij² / n).
    sd = math.sqrt(2 * float((h ** 2).sum() - (torch.diagonal(h) ** 2).sum()) / probes)
    assert abs(spec["slq_trace"] - float(torch.trace(h))) <= 4 * sd  # 4σ on one fixed seed


class FakeRun:
    def __init__(self):
        self.logged = []

    def log_scalar(self, name, value, step):
        self.logged.append((name, value, step))


def test_record_is_due_every_kth_and_a_non_finite_hessian_is_recorded_as_failed(mlp_problem):
    model, x, y = mlp_problem
    cfg = SpectrumConfig(every=2, top_k=2, method="lanczos", tol=1e-8, slq_probes=0, slq_steps=1, batch_size=20)
    _run = FakeRun()
    assert record_spectrum(_run, model, cfg, (x, y), None, t=5, index=1, seed=0) == {}  # 1 % 2: not due
    rec = record_spectrum(_run, model, cfg, (x, y), None, t=6, index=2, seed=0)["hessian_spectrum"]
    assert rec["status"] == "ok" and _run.logged == [("hessian/max_eig", rec["eigenvalues"][0], 6)]
    assert rec == record_spectrum(FakeRun(), model, cfg, (x, y), None, t=6, index=2, seed=0)["hessian_spectrum"]
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    failed = record_spectrum(_run, broken, cfg, (x, y), None, t=8, index=4, seed=0)["hessian_spectrum"]
    assert failed["status"] == "failed" and "non-finite" in failed["reason"] and len(_run.logged) == 1


# --------------------------------------------------------------- validation

@pytest.mark.parametrize("entry, value, match", [
    ("every", 0, "hessian_spectrum.every"),
    ("top_k", 0, "hessian_spectrum.top_k"),
    ("method", "arnoldi", "hessian_spectrum.method"),
    ("tol", 0.0, "hessian_spectrum.tol"),
    ("slq_probes", -1, "hessian_spectrum.slq_probes"),
    ("slq_steps", 0, "hessian_spectrum.slq_steps"),
    ("batch_size", 0, "hessian_spectrum.batch_size"),
])
def test_validate_names_the_key(entry, value, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        validate_hessian_spectrum({**DEFAULT, "every": 1, entry: value})
    assert validate_hessian_spectrum(DEFAULT) is None  # off by default, yet every entry is checked


# --------------------------------------------------------------- the experiment on tiny CIFAR-10

@pytest.fixture(scope="module")
def expt():
    return load_experiment("expt_llc_curve")


SPECTRUM = dict(every=2, top_k=3, method="lanczos", tol=1e-2, slq_probes=2, slq_steps=5, batch_size=8)


def test_run_records_k_eigenvalues_at_every_kth_checkpoint(expt, cifar, tmp_path):
    r = run(expt, tmp_path, **tiny(cifar, seed=3, hessian_spectrum=SPECTRUM))
    checkpoints = r.info["checkpoints"]
    assert [c["t"] for c in checkpoints] == [0, 2, 4]
    recorded = [c for c in checkpoints if "hessian_spectrum" in c]
    assert [c["t"] for c in recorded] == [0, 4]  # checkpoints 0 and 2 of every=2
    for c in recorded:
        spec = c["hessian_spectrum"]
        assert spec["status"] == "ok" and spec["method"] == "lanczos" and len(spec["eigenvalues"]) == 3
        assert spec["eigenvalues"] == sorted(spec["eigenvalues"], reverse=True)
        assert len(spec["slq_nodes"]) == 2 and len(spec["slq_weights"][0]) == 5
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert metrics["hessian/max_eig"]["steps"] == [0, 4]
    assert metrics["hessian/max_eig"]["values"] == [c["hessian_spectrum"]["eigenvalues"][0] for c in recorded]


def test_default_run_records_no_spectrum(expt, cifar, tmp_path):
    r = run(expt, tmp_path, **tiny(cifar, seed=3))
    assert not any("hessian_spectrum" in c for c in r.info["checkpoints"])
    assert "hessian/max_eig" not in json.loads((tmp_path / "1" / "metrics.json").read_text())


@pytest.mark.parametrize("spectrum, key", [
    (dict(SPECTRUM, method="arnoldi"), "hessian_spectrum.method"),
    (dict(SPECTRUM, top_k=0), "hessian_spectrum.top_k"),
    (dict(SPECTRUM, batch_size=41), "hessian_spectrum.batch_size"),  # n = 40, known once the data are loaded
])
def test_bad_spectrum_key_fails_before_compute(expt, cifar, monkeypatch, spectrum, key):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(expt, "train", no_compute)
    monkeypatch.setattr(expt, "estimate_llc_flat", no_compute)
    monkeypatch.setattr(expt, "record_spectrum", no_compute)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **tiny(cifar, hessian_spectrum=spectrum))


def test_resumes_bit_for_bit_with_the_spectrum(tmp_path, monkeypatch, cifar):
    expt = load_experiment("expt_llc_curve")
    config = {**llc_config(cifar), "hessian_spectrum": SPECTRUM}  # checkpoints t = 0, 2 | 4, 5; spectra at 0 and 4
    dirs = interrupted_then_resumed(expt, tmp_path, monkeypatch, config, 3, "SIGTERM")
    assert_resumed_equals_uninterrupted(*dirs, 3, "SIGTERM")  # info (the spectra) and hessian/max_eig included
    info = json.loads((dirs[2] / "info.json").read_text())
    assert [c["t"] for c in info["checkpoints"] if "hessian_spectrum" in c] == [0, 4]  # t = 4 after the resume
