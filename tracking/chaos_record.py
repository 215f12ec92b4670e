"""What an ``expt_chaos`` run records: per-step curvature metrics, Lyapunov subspace similarity,
the final result and the artifacts (docs/chaos.md#recorded).

Every function takes the Sacred run object explicitly; nothing here reads the config.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from dynamics.hessian import SymEig
from dynamics.lyapunov import expanding_subspace, exponents, initial_vectors, local_chaos_counts
from dynamics.perturb import fit_distance, random_subspace_baseline, save_eigenthings, subspace_similarity

POSITIVE_EXPONENT = 1e-10  # χ above this counts as positive (a step that is the identity gives |R_ii| = 1 ± eps)


def pooled_abs(eig: SymEig, size=256) -> np.ndarray:
    """|H| average-pooled to at most size x size (the original's plot_mats)."""
    h = eig.matmul(torch.eye(eig.dim, dtype=eig.eigenvectors.dtype, device=eig.eigenvectors.device)).abs().float()
    return torch.nn.functional.adaptive_avg_pool2d(h[None, None], min(size, eig.dim))[0, 0].cpu().numpy()


def save_eigenthings_artifact(_run, name, lyap, p, step, rooted=False):
    """Artifact ``name``: the initial vectors and rates (eigenthings format) and the Benettin spectrum; returns it.

    ``rooted`` marks a ``save_lyapunov_at`` file: the original stored (σ²)^{1/t} there and σ² at
    the end of training, which ``cgd.global_rule='hessian'`` needs to know.
    """
    spectrum = torch.sort(exponents(lyap), descending=True).values.cpu().numpy()
    rates, vecs = initial_vectors(lyap)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_eigenthings(os.path.join(tmp, name), rates, vecs, p, benettin_exponents=spectrum,
                                steps=np.int64(step), rooted=np.bool_(rooted))
        _run.add_artifact(str(path))
    return spectrum


def artifact(_run, name, **arrays):
    """Attach the arrays to the run as the compressed .npz artifact ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        np.savez_compressed(path, **arrays)
        _run.add_artifact(path)



def log_curvature(_run, step, eig, g0, optim, log, lyap, checked, record, thr):
    """Hessian statistics, local chaos counts, gradient cosines and Lyapunov summaries at one step."""
    if eig is not None and log["log_eigenthings"]:
        lam = eig.eigenvalues
        implicit_zero = eig.rank_bound < eig.dim
        lam_max = max(float(lam.max()), 0.0) if implicit_zero else float(lam.max())
        lam_min = min(float(lam.min()), 0.0) if implicit_zero else float(lam.min())
        counts = eig.counts()
        chaos = local_chaos_counts(lam, optim.lr, optim.momentum, thr)
        g = g0.double()
        gn = float(g.norm())
        cos_max = abs(float(eig.eigenvectors[:, -1] @ g)) / gn if gn > 0 else 0.0
        cos_min = abs(float(eig.eigenvectors[:, 0] @ g)) / gn if gn > 0 else 0.0
        values = {
            "hessian/max_eig": lam_max, "hessian/min_eig": lam_min, "hessian/mean_eig": float(lam.sum()) / eig.dim,
            "hessian/num_pos": counts["num_pos"], "hessian/num_neg": counts["num_neg"],
            "hessian/num_zero": counts["num_zero"],
            "chaos/num_neg": chaos["num_neg"], "chaos/num_large": chaos["num_large"],
            "chaos/num_chaotic": chaos["num_chaotic"],
            "grad/norm": gn, "grad/cos_max_eig": cos_max, "grad/cos_min_eig": cos_min,
        }
        for name, value in values.items():
            _run.log_scalar(name, value, step)
        record["num_neg"].append(counts["num_neg"])
        record["min_eig"].append(lam_min)
    if lyap is not None and log["log_lyapunov"]:
        ex_ = exponents(lyap)
        _run.log_scalar("lyapunov/max", float(ex_.max()), step)
        _run.log_scalar("lyapunov/min", float(ex_.min()), step)
        _run.log_scalar("lyapunov/num_pos", int((ex_ > POSITIVE_EXPONENT).sum()), step)


def lyapunov_subsim(_run, step, lyap, fixed):
    """Compare the expanding initial subspace now (t = tangent maps applied) with the one fixed at each t0 < t.

    Both are spans of initial directions with positive finite-time exponents (eigenvectors of
    YᵀY with eigenvalue > 1, as the original's ``chaotic-chaotic`` similarity); with momentum
    they live in the (δw, δv) tangent space of dimension 2P.
    """
    later = {t0: sub for t0, sub in fixed.items() if t0 < lyap.steps and sub.shape[1]}
    if not later:
        return
    cur = expanding_subspace(lyap, POSITIVE_EXPONENT)  # (D, n_pos)
    _run.log_scalar("subsim/lyapunov/num_pos", cur.shape[1], step)
    if cur.shape[1] == 0:
        return
    for t0, sub in later.items():
        _run.log_scalar(f"subsim/lyapunov/t{t0}", subspace_similarity(sub, cur), step)
        _run.log_scalar(f"subsim/lyapunov/t{t0}_baseline",
                        random_subspace_baseline(sub.shape[1], cur.shape[1], cur.shape[0]), step)


def hessian_chaotic_subsim(_run, step, eig: SymEig, thr: float, optim, prev, p: int):
    """Log the similarity of this step's chaotic eigenspace (λ < −thr or λ > 2(1+μ)/lr) with ``prev``'s.

    ``prev`` is the last logged step's (P, m) basis, or None; the random baseline is for two
    subspaces of R^p of these dimensions. Returns this step's basis, the next call's ``prev``.
    """
    mask = (eig.eigenvalues < -thr) | (eig.eigenvalues > 2 * (1 + optim.momentum) / optim.lr)
    cur = eig.eigenvectors[:, mask]  # (P, m)
    if prev is not None and cur.shape[1] and prev.shape[1]:
        _run.log_scalar("subsim/hessian_chaotic", subspace_similarity(prev, cur), step)
        _run.log_scalar("subsim/hessian_chaotic_baseline", random_subspace_baseline(prev.shape[1], cur.shape[1], p),
                        step)
    return cur


def copy_distances(_run, step, ws, record) -> None:
    """Log and record ‖w_i − w_0‖ (in float64) of every perturbed copy i >= 1 of the reference ``ws[0]``."""
    for i, w in enumerate(ws[1:], start=1):
        d = float((w.double() - ws[0].double()).norm())
        _run.log_scalar(f"perturb/distance/copy{i}", d, step)
        record[f"dist{i}"].append(d)
    record["dist_steps"].append(step)


def grad_snr(grads) -> float | None:
    """‖mean g‖² / mean ‖g − mean g‖² over the gradients of a window; None when they are all equal."""
    gs = torch.stack(list(grads))  # (window, P)
    mean = gs.mean(0)
    noise = float((gs - mean).pow(2).sum(1).mean())
    return float(mean @ mean) / noise if noise > 0 else None


def record_hessian(record, step, eig: SymEig, spectra_every, mats_every) -> None:
    """Keep the full spectrum at steps that are a multiple of one of ``spectra_every``, and the pooled |H|
    (:func:`pooled_abs`) at multiples of ``mats_every`` (0 or None: never)."""
    if any(step % k == 0 for k in spectra_every):
        record["spectra"].append(eig.all_eigenvalues().float().cpu().numpy())
        record["spectra_steps"].append(step)
    if mats_every and step % mats_every == 0:
        record["mats"].append(pooled_abs(eig))
        record["mats_steps"].append(step)


def log_epoch(_run, step, record, evaluations) -> None:
    """Log and record ``{split: dynamics.engine.evaluate's result}`` (loss and accuracy) at an epoch's end."""
    for split, ev in evaluations.items():
        for name, value in ((f"{split}_loss", ev["loss"]), (f"{split}_accuracy", ev["accuracy"])):
            _run.log_scalar(f"epoch/{name}", value, step)
            record[name].append(value)
    record["epoch_steps"].append(step)


def finish(_run, c, checked, record, lyap, copies, step, epoch, p):
    """Artifacts and the run's result."""
    result = {"num_params": p, "model_dim": p, "num_steps": step, "epochs": epoch + 1,
              "final_train_loss": record["train_loss"][-1], "final_train_accuracy": record["train_accuracy"][-1],
              "final_test_loss": record["test_loss"][-1], "final_test_accuracy": record["test_accuracy"][-1],
              "best_test_accuracy": max(record["test_accuracy"])}
    if record["num_neg"]:
        num_neg = np.asarray(record["num_neg"])
        result["hessian"] = {"frac_steps_with_neg": float((num_neg > 0).mean()), "mean_num_neg": float(num_neg.mean()),
                             "min_eig": float(np.min(record["min_eig"]))}
    if lyap is not None:
        spectrum = torch.sort(exponents(lyap), descending=True).values.cpu().numpy()
        result["lyapunov"] = {"max": float(spectrum[0]), "min": float(spectrum[-1]),
                              "num_pos": int((spectrum > POSITIVE_EXPONENT).sum()), "k": int(spectrum.size)}
        artifact(_run, "lyapunov_final.npz", exponents=spectrum, step=np.int64(step))
        if c["logging"]["save_eigenthings"]:
            save_eigenthings_artifact(_run, "eigenthings.npz", lyap, p, step)
    if copies:
        steps = np.asarray(record["dist_steps"], dtype=float)
        fits = {}
        dist = np.stack([record[f"dist{i}"] for i in range(1, len(copies) + 1)])
        for info, d in zip(copies, dist):
            entry = dict(info)
            try:
                fit = fit_distance(steps, d, d0=info["eps"] if c["distance_fit_d0"] == "fixed" else None)
                entry.update(a=fit.a, b=fit.b, d0=fit.d0, a_err=fit.a_err, b_err=fit.b_err, d0_err=fit.d0_err,
                             rmse=fit.rmse, d0_fixed=c["distance_fit_d0"] == "fixed")
            except (ValueError, RuntimeError) as err:  # too few points, or curve_fit did not converge
                entry["fit_error"] = str(err)
            entry["final_distance"] = float(d[-1])
            fits[f"copy{info['copy']}"] = entry
        result["perturb"] = fits
        artifact(_run, "distances.npz", steps=steps, distances=dist,
                  strategies=np.array([cp["strategy"] for cp in copies]), eps=np.array([cp["eps"] for cp in copies]))
    if record["traj"]:
        artifact(_run, "trajectories.npz", steps=np.asarray(record["traj_steps"]),
                  projections=torch.stack(record["traj"], dim=1).cpu().numpy())
    if record["spectra"]:
        artifact(_run, "hessian_spectra.npz", steps=np.asarray(record["spectra_steps"]),
                 eigenvalues=np.stack(record["spectra"]))
    if record["mats"]:
        artifact(_run, "hessian_matrices.npz", steps=np.asarray(record["mats_steps"]),
                 abs_hessian=np.stack(record["mats"]))
    return result

