"""Chaotic dynamics of SGD: exact minibatch Hessians, Lyapunov spectra, CGD pruning, perturbed copies.

Trains a small classifier (MLP 256-20-10 or a small CNN) on USPS or FashionMNIST at
16x16 with batch 8 (docs/chaos.md). At every step it takes the exact minibatch
Hessian H_t (layer-structured for ReLU MLPs, ``dynamics.mlp_hessian``; vmapped HVPs
otherwise) and, per the logging flags, records its spectrum, the local chaos counts
(λ < 0 or λ > 2(1+μ)/lr), the cosine of the gradient with its extreme eigenvectors, and
propagates a tangent frame through Y ← (I − lr H_t) Y (momentum: the velocity is
part of the tangent state) with QR re-orthonormalisation for the Lyapunov
exponents. ``optim.name=cgd`` removes the gradient's components along a chosen set
of eigenvectors (``dynamics.cgd``, ``dynamics.cgd_select``; group ``cgd`` restores
the original's pruning rules). ``perturb_strat`` trains ``parallel`` perturbed
copies on the same batches and fits d(t)² = a t + b t² + d0² to their distances.

Validation is ``tracking.chaos_checks``, recording ``tracking.chaos_record``; a signal checkpoints
the loop (``dynamics.chaos_resume``) and the rerun resumes it (docs/runs.md#preemption).
Options keep the original's names; Hydra's groups become config dicts:

    python experiments/expt_chaos.py with optim.name=cgd optim.k=100 optim.prune_set=neg \\
        logging.log_lyapunov=True lyapunov.k=50 seed=42
"""
from __future__ import annotations

import collections
import math
from enum import IntEnum, unique

import torch
from sacred import Experiment
from torch.func import grad_and_value

from core.config_docs import with_nested_docs
from core.runtime import derived_seed, resolve_dtype
from data.vision import load_vision_dataset
from dynamics.cgd import cgd_gradient, sgd_step
from dynamics.cgd_select import cgd_tangent_hessian, global_directions, pruned_directions
from dynamics.chaos_resume import loop_state, restore_loop
from dynamics.engine import BoundaryBefore, StepOutput, check_finite, evaluate, run_steps
from dynamics.hessian import SymEig, dense_eigh, dense_hessian
from dynamics.lyapunov import expanding_subspace, init_lyapunov, propagate, sgd_tangent_map
from dynamics.mlp_hessian import mlp_hessian_eigh, mlp_params_from_flat
from dynamics.perturb import perturbed_copies
from llc.estimate import flat_model_for_module
from models.chaos_nets import build_model
from tracking.chaos_checks import IMAGE_SIZE, NUM_CLASSES, validate, warn_slow_cpu_frame
from tracking.chaos_record import (
    POSITIVE_EXPONENT,
    copy_distances,
    finish,
    grad_snr,
    hessian_chaotic_subsim,
    log_curvature,
    log_epoch,
    lyapunov_subsim,
    record_hessian,
    save_eigenthings_artifact,
)
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("chaos")))


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots
    tags = []  # labels kept with the run (the original's neptune tags)

    # --- data and training (original: main config) ---
    dataset = "usps"  # usps | fmnist (resized to 16x16); normalised with the training split's statistics
    data_root = None  # None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets; downloaded on demand
    batch_size = 8  # minibatch; the Hessian is that of the minibatch loss
    max_epochs = 40  # passes over the shuffled training set
    max_steps = None  # stop after this many steps (None: max_epochs full epochs)
    debug = False  # small subset: at most 256 training and 128 test points
    num_train = None  # use the first num_train training points (None: all)
    num_test = None  # likewise for the test split

    # --- model (original: model group; `model=cnn` -> model.name=cnn) ---
    model = dict(
        name="mlp",  # mlp | cnn
        inter_dim=20,  # mlp: hidden width (256-20-10)
        base_channels=4,  # cnn: channels c of the full-resolution convs (the tail goes c, 2c, 2c)
        block_cnt=1,  # cnn: full-resolution conv -> activation blocks before the 4-pool tail (1,158 params at 4, 1)
        activation="relu",  # relu | tanh | sigmoid | elu | linear (structured Hessian: relu, linear)
    )

    # --- optimiser (original: optim group; `optim=cgd` -> optim.name=cgd) ---
    optim = dict(
        name="sgd",  # sgd | cgd (prune gradient components along Hessian eigenvectors)
        lr=1e-3,  # learning rate
        momentum=0.0,  # heavy-ball μ in [0, 1), PyTorch's form
        k=None,  # cgd: directions pruned per step (None: the whole prune set)
        prune_set="chaotic",  # cgd: chaotic (λ < 0 or λ > 2(1+μ)/lr) | pos | neg
        prune_k="top_abs",  # cgd: which k of the set: top_abs (largest |λ|) | rand
        prune_start=0,  # cgd: first step that prunes
        noise=False,  # cgd: replace pruned components by noise_fac · N(0, 1)
        noise_fac=None,  # cgd: noise scale (None: mean |g_i| of each step's gradient, the original's default)
        gamma=1.0,  # cgd: step along (1 − gamma) g + gamma g' (the original's CGD gamma; 1: pruned gradient only)
        prune_global=False,  # cgd: prune fixed stored Lyapunov vectors (χ > 0: chaotic/pos, χ < 0: neg)
        prune_global_checkpoint=None,  # cgd: eigenthings .npz for prune_global (None: eigenthings_path/_run)
    )
    # see docs/chaos.md#cgd-and-other-differences-from-the-original
    # CGD rules where the original differs, restored by cgd_original
    cgd = dict(
        zeros="keep",  # keep: zero eigenvalues never pruned | pool: in neg and pos, as the original's λ <= 0 / λ >= 0
        rand_draws="distinct",  # prune_k=rand: distinct | replacement (the original's randint; repeats prune once)
        rank="abs",  # top_abs on chaotic: abs (|λ|) | growth ((1 − lr λ)², the original)
        band="momentum",  # chaotic above 2(1+μ)/lr | plain: above 2/lr (the original, momentum ignored)
        global_rule="exponent_sign",  # prune_global: exponent_sign (χ > 0 / χ < 0) | hessian (the original's, on σ²)
        tangent="derivative",  # cgd's Lyapunov map: derivative ((I − γ V_pV_pᵀ) H) | projected (P_kept H P_kept, orig.)
    )

    # --- curvature ---
    eps_eigh = 0.0  # eigh of H + eps·I (eigenvalues shifted back)
    # identity (H + eps·I) | all_entries (H + eps on every entry, not shifted back: the original's code)
    eps_eigh_mode = "identity"
    lyapunov = dict(
        k=None,  # tangent directions tracked (None: all P, or 2P with momentum; cost ~ P·K per step)
        qr_every=1,  # steps between QR re-orthonormalisations (Benettin)
    )
    max_memory_gb = 8.0  # refuse exact Hessians / tangent frames that would need more

    # --- perturbation experiment ---
    parallel = 1  # perturbed copies (copy 0 is the unperturbed reference); cycles over (strategy, eps)
    perturb_strat = None  # None | max_chaos | randn_chaos | max_convergence | randn_convergence | randn | all
    perturb_eps = [1e-1]  # perturbation norms
    eigenthings_path = None  # .npz written by save_eigenthings (Lyapunov exponents and initial vectors)
    eigenthings_run = dict(  # or the eigenthings.npz artifact of an earlier run (used when source is set)
        source=None,  # run store: 'runs/chaos', a MongoDB URL or 'host:port:db'
        run_id=None,  # that run's id, or
        run_key=None,  # its run_key (what gen_commands writes)
    )

    distance_fit_d0 = "fixed"  # d(t)² = a t + b t² + d0²: fixed (d0 = the copy's perturb_eps, original) | free

    # --- logging (original: logging group) ---
    logging = dict(
        log_eigenthings=True,  # Hessian spectrum statistics, local chaos counts, gradient cosines
        log_lyapunov=True,  # Lyapunov exponents (max, min, number positive)
        log_subsim=False,  # similarity of the chaotic Hessian eigenspace between logged steps
        log_lyapunov_subsim=False,  # similarity of the expanding Lyapunov subspace fixed at t_lya_subsim
        log_freq=1,  # log every log_freq steps (10 suggested for long runs)
        t_lya_subsim=None,  # steps t_0 at which the Lyapunov subspace is fixed, e.g. [10, 10000]
        plot_eigs_every=0,  # store the full Hessian spectrum every n steps (artifact hessian_spectra.npz)
        save_hessian_dist_every=0,  # same store (the original's second name for it)
        plot_mats_every=0,  # store |H| pooled to 256x256 every n steps (artifact hessian_matrices.npz)
        plot_trajectories=False,  # store the copies' trajectories projected on 2 random directions
        signal_noise_window=0,  # gradient signal-to-noise ratio over the last n steps (0: off)
        save_eigenthings=False,  # after training: artifact eigenthings.npz, exponents and initial vectors (full frame)
        save_lyapunov_at=None,  # epoch (0-based) after which the same goes to eigenthings_epoch<E>.npz (full frame)
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda (the original's gpus=['cuda:0'] -> device=cuda:0)
    dtype = "float32"  # training dtype; curvature and tangent frames are always float64


@ex.named_config
def cgd_chaotic():
    optim = dict(name="cgd", prune_set="chaotic")  # Figure 1


@ex.named_config
def cgd_pos():
    optim = dict(name="cgd", prune_set="pos")  # Figure 1


@ex.named_config
def cgd_neg():
    optim = dict(name="cgd", prune_set="neg")  # Figure 1


@ex.named_config
def cgd_original():
    cgd = dict(zeros="pool", rand_draws="replacement", rank="growth", band="plain", global_rule="hessian",
               tangent="projected")


@ex.named_config
def lyapunov_save():
    # Figure 3, first run: Lyapunov directions for the perturbation run (same seed)
    logging = dict(save_eigenthings=True)


@ex.named_config
def distance():
    perturb_strat = "all"  # Figure 3a: five perturbed copies, one per strategy (needs eigenthings_path)
    parallel = 5
    logging = dict(log_eigenthings=False, log_lyapunov=False)


@ex.named_config
def subsim_cnn():
    model = dict(name="cnn")  # subspace similarity of the expanding Lyapunov directions, CNN on USPS
    logging = dict(log_lyapunov_subsim=True, t_lya_subsim=[10, 10000], log_freq=10)


# ----------------------------------------------------------------------------- helpers

@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    INIT = 0
    BATCHES = 1
    PERTURB = 2
    CGD = 3
    LYAP = 4
    PROJ = 5


def _stream(seed, purpose, device="cpu"):
    return torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))


def cross_entropy(z, y):
    # Written out so that it can be differentiated twice by forward-over-reverse.
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]).mean()


def _load_data(config, dtype, device):
    kw = dict(data_root=config["data_root"], size=IMAGE_SIZE, dtype=dtype)
    x, y = load_vision_dataset(config["dataset"], train=True, **kw)
    xt, yt = load_vision_dataset(config["dataset"], train=False, **kw)
    n_train = config["num_train"] or (256 if config["debug"] else None)
    n_test = config["num_test"] or (128 if config["debug"] else None)
    x, y, xt, yt = x[:n_train], y[:n_train], xt[:n_test], yt[:n_test]
    if config["batch_size"] > x.shape[0]:
        raise ValueError(f"batch_size must be <= the number of training points ({x.shape[0]}); "
                         f"got {config['batch_size']}")
    return x.to(device), y.to(device), xt.to(device), yt.to(device)


# ----------------------------------------------------------------------------- main

@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    warn_slow_cpu_frame(checked)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    c, log, optim, rules, device = _config, _config["logging"], checked.optim, checked.rules, checked.device
    dtype, p = resolve_dtype(c["dtype"]), checked.num_params

    model = build_model(c["model"]["name"], (1, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, _stream(_seed, Stream.INIT),
                        inter_dim=c["model"]["inter_dim"], base_channels=c["model"]["base_channels"],
                        block_cnt=c["model"]["block_cnt"], activation=c["model"]["activation"]).to(device)
    f, w_init = flat_model_for_module(model, dtype, device)
    f64, _ = flat_model_for_module(model, torch.float64, device)
    x, y, xt, yt = _load_data(c, dtype, device)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / c["batch_size"])
    total_steps = (steps_per_epoch * c["max_epochs"] if c["max_steps"] is None
                   else min(c["max_steps"], steps_per_epoch * c["max_epochs"]))
    _run.info.update(model_dim=p, steps_per_epoch=steps_per_epoch, num_train=n, num_test=xt.shape[0])

    def loss64(w, xb, yb):
        return cross_entropy(f64(w, xb), yb)

    def curvature(w, xb, yb) -> SymEig:
        w64, x64 = w.double(), xb.double()
        if checked.structured:
            ws, bs = mlp_params_from_flat(w64, model.sizes)
            return mlp_hessian_eigh(ws, bs, x64.flatten(1), yb, model.activation, "cross_entropy", c["eps_eigh"],
                                    c["eps_eigh_mode"])
        return dense_eigh(dense_hessian(loss64, w64, x64, yb), c["eps_eigh"], c["eps_eigh_mode"])

    def loss_acc(w, xb, yb):
        z = f(w, xb)
        return cross_entropy(z, yb), (z.argmax(1) == yb).float().mean()

    grad_fn = grad_and_value(loss_acc, has_aux=True)

    # --- copies: 0 is the reference; 1.. are perturbed (same batches) ---
    ws, copies = [w_init.clone()], []
    if checked.strategies:
        shifted, copies = perturbed_copies(w_init, checked.strategies, c["perturb_eps"], c["parallel"],
                                           _stream(_seed, Stream.PERTURB), checked.eigenthings)
        ws += shifted
        _run.info["copies"] = copies
    bufs = [None] * len(ws)

    global_dirs = None if checked.prune_dirs is None else global_directions(checked.prune_dirs, p, device)

    lyap = None
    if checked.needs_lyapunov:
        lyap = init_lyapunov(checked.tangent_dim, checked.tangent_k, _stream(_seed, Stream.LYAP), torch.float64, device,
                             track_initial=checked.needs_initial)

    gen_batches, gen_cgd = _stream(_seed, Stream.BATCHES), _stream(_seed, Stream.CGD)
    proj = None
    if log["plot_trajectories"]:
        proj = torch.linalg.qr(torch.randn(p, 2, generator=_stream(_seed, Stream.PROJ),
                                           dtype=torch.float64)).Q.to(device)
    grads_window = collections.deque(maxlen=log["signal_noise_window"] or 1)
    record = collections.defaultdict(list)  # steps and values kept for artifacts and the result
    prev_chaotic, fixed_lyap = None, {}
    spectra_every = [k for k in (log["plot_eigs_every"], log["save_hessian_dist_every"]) if k]

    step, epoch0, start0, start, perm, gens = 0, 0, 0, 0, None, {"batches": gen_batches, "cgd": gen_cgd}
    if ck.state is not None:  # resume before step `step`: batch perm[start0:] of epoch0
        (step, epoch0, start0, perm, ws, bufs, lyap, prev_chaotic, fixed_lyap, grads_window,
         record) = restore_loop(ck.state, gens, device, grads_window.maxlen)

    def capture():
        return loop_state(step=step, epoch=epoch, start=start, perm=perm, ws=ws, bufs=bufs, gens=gens, lyap=lyap,
                          prev_chaotic=prev_chaotic, fixed_lyap=fixed_lyap, grads_window=grads_window, record=record)

    def before(s):  # the boundary before step s, at batch perm[start:] of this epoch
        nonlocal step, start
        step, start = s, starts[s - step_epoch]
        ck.boundary(s, capture)

    def step_fn(step):
        nonlocal lyap, prev_chaotic
        idx = perm[start:start + c["batch_size"]]
        xb, yb = x[idx], y[idx]
        out = [grad_fn(w, xb, yb) for w in ws]  # [(grad, (loss, acc))]
        g0, (loss0, acc0) = out[0]
        for o in out:  # every copy's loss, before anything is computed from it
            check_finite(float(o[1][0]), step)
        logging_now = step % log["log_freq"] == 0
        eig = curvature(ws[0], xb, yb) if checked.needs_hessian else None
        thr = eig.zero_threshold() if eig is not None else 0.0

        # --- CGD: which directions this step removes ---
        pruned_vecs, null_of = (pruned_directions(eig, global_dirs, optim, rules, gen_cgd, thr)  # (P, m); U whose
                                if optim.prunes and step >= optim.prune_start else (None, None))  # complement goes too

        # --- Lyapunov: tangent map of this step at w_t ---
        if lyap is not None:
            # under CGD the map of w' = w − lr (I − γ V_p V_pᵀ) g (V_p held fixed)
            hmat = (eig.matmul if pruned_vecs is None
                    else cgd_tangent_hessian(eig.matmul, pruned_vecs, optim.gamma, rules))
            lyap = propagate(lyap, sgd_tangent_map(hmat, optim.lr, optim.momentum, p), c["lyapunov"]["qr_every"])
            if log["log_lyapunov_subsim"] and lyap.steps in checked.t_lya_subsim:
                fixed_lyap[lyap.steps] = expanding_subspace(lyap, POSITIVE_EXPONENT)  # t0 counts tangent maps

        if logging_now:
            _run.log_scalar("train/batch_loss", float(loss0), step)  # the step's minibatch, before its update
            _run.log_scalar("train/batch_accuracy", float(acc0), step)
            log_curvature(_run, step, eig, g0, optim, log, lyap, checked, record, thr)
            if log["log_subsim"] and eig is not None:
                prev_chaotic = hessian_chaotic_subsim(_run, step, eig, thr, optim, prev_chaotic, p)
            if log["log_lyapunov_subsim"] and lyap is not None:
                lyapunov_subsim(_run, step, lyap, fixed_lyap)
            if copies:
                copy_distances(_run, step, ws, record)
            if proj is not None:
                record["traj"].append(torch.stack([w.double() - w_init.double() for w in ws]) @ proj)
                record["traj_steps"].append(step)
            if log["signal_noise_window"] and len(grads_window) == log["signal_noise_window"]:
                if (snr := grad_snr(grads_window)) is not None:
                    _run.log_scalar("grad/snr", snr, step)
            if pruned_vecs is not None:
                num_null = 0 if null_of is None else eig.dim - eig.rank_bound
                _run.log_scalar("cgd/num_pruned", pruned_vecs.shape[1] + num_null, step)
        if log["signal_noise_window"]:
            grads_window.append(g0.double())
        if eig is not None:
            record_hessian(record, step, eig, spectra_every, log["plot_mats_every"])

        # --- the update, identical batches for every copy ---
        for i, (g, _) in enumerate(out):
            if pruned_vecs is not None and (i == 0 or global_dirs is not None):
                g, frac = cgd_gradient(g.double(), pruned_vecs, optim, gen_cgd, null_of)
                if i == 0 and logging_now:
                    _run.log_scalar("cgd/pruned_grad_frac", frac, step)
            ws[i], bufs[i] = sgd_step(ws[i], bufs[i], g.to(dtype), optim.lr, optim.momentum)
        return StepOutput(None)

    with ck.deferring():  # signals wait for the next step boundary; a resumed run's global RNGs come back here
        for epoch in range(epoch0, c["max_epochs"]):
            if not (epoch == epoch0 and perm is not None):
                perm = torch.randperm(n, generator=gen_batches).to(device)
            starts, step_epoch = range(start0 if epoch == epoch0 else 0, n, c["batch_size"]), step
            step = run_steps(step_fn, step, step + min(len(starts), total_steps - step), [BoundaryBefore(before)])
            log_epoch(_run, step, record, {
                split: evaluate(lambda xc: f(ws[0], xc), xs, ys, lambda z, yc: float(cross_entropy(z, yc)) * z.shape[0])
                for split, xs, ys in (("train", x, y), ("test", xt, yt))})
            check_finite(record["train_loss"][-1], step, what="full training-set loss")
            if lyap is not None and log["save_lyapunov_at"] == epoch:
                spectrum = save_eigenthings_artifact(_run, f"eigenthings_epoch{epoch}.npz", lyap, p, step, rooted=True)
                _run.info[f"lyapunov_spectrum_epoch{epoch}"] = spectrum.tolist()
            if step >= total_steps:
                break

    return json_ready(finish(_run, c, checked, record, lyap, copies, step, epoch, p))


if __name__ == "__main__":
    run_cli(ex)
