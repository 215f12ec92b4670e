"""devinterp's side of bench/llc_vs_devinterp.py, run inside a devinterp venv.

Two devinterp versions cannot share one interpreter, so llc_vs_devinterp.py starts
one worker per version, each with that version's venv (.venv-bench/devinterp-X,
layered on the project's .venv; `make bench-venvs`), and talks to it over
stdin/stdout, one JSON object a line:

    {"op": "load", "path": "<file from torch.save>"}   -> {"ok": true, "version": "2.0.1"}
    {"op": "run", "chains": C, "num_steps": T, "num_burnin_steps": b, "seed": s,
     "nbeta": nβ, "init_loss": L_n(w*)}                  -> {"seconds": dt, "lambdahat": [C floats]}
    ("fresh_batches": true, 2.x only: a dataset long enough that no batch is replayed; see TiledDictDataset)

The loaded file holds the model at w*, x, y, the loss name, ε, γ and the batch size
(llc_vs_devinterp.save_workload). ``seconds`` is the wall time of devinterp's
sampling call only. Replies are prefixed with REPLY so stray prints do not break
the protocol.

How each version is called (its recommended route for a generic nn.Module):
- 1.x: ``estimate_learning_coeff_with_summary`` with its default SGLD, cores=1, and
  a DataLoader whose dataset fetches a whole batch with one gather (``__getitems__``).
- 2.x: ``sample_single_chain`` once per chain with ``SGMCMC.sgld`` (the "sgmcmc_sgld"
  method of its ``sample``), seed = dataloader seed = seed·1000 + chain, and a dataset
  of {"input_ids": x, "y": y} rows whose ``__getitems__`` returns the batch as one item
  (one gather; its DataLoader's collate adds a leading 1, which ``evaluate`` drops).
  λ̂ per chain = nβ (mean of the post-burn-in draws' minibatch losses − L_n(w*)), the
  estimator of 1.x and of 2.x's compute_llc (which averages burn-in too).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

REPLY = "REPLY "
LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


class BatchFetchDataset(TensorDataset):
    """TensorDataset whose DataLoader fetches a batch with one gather per tensor (devinterp 1.x)."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t.index_select(0, i) for t in self.tensors)


class BatchDictDataset(TensorDataset):
    """(x, y) rows as devinterp 2.x's {"input_ids": x, "y": y}; a batch is one gather, one item."""

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        i = torch.as_tensor(indices, device=self.tensors[0].device)
        x, y = (t.index_select(0, i) for t in self.tensors)
        return [{"input_ids": x, "y": y}]


class TiledDictDataset(BatchDictDataset):
    """BatchDictDataset repeated to ``length`` rows (row j is data row j mod n).

    With length >= steps * batch, one shuffled epoch covers the whole chain, so 2.x's
    itertools.cycle never replays the first epoch's batches (request "fresh_batches").
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int):
        super().__init__(x, y)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        n = self.tensors[0].shape[0]
        return super().__getitems__([i % n for i in indices])


def keep_batch(batch):
    return batch


def run_v1(wl: dict, req: dict) -> np.ndarray:
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loss = LOSSES[wl["loss"]]
    loader = DataLoader(BatchFetchDataset(wl["x"], wl["y"]), batch_size=wl["batch_size"], shuffle=True,
                        collate_fn=keep_batch)

    def evaluate(model, batch):
        xb, yb = batch
        return loss(model(xb), yb)

    out = estimate_learning_coeff_with_summary(
        copy.deepcopy(wl["model"]), loader=loader, evaluate=evaluate,
        optimizer_kwargs=dict(lr=wl["epsilon"], localization=wl["gamma"], nbeta=req["nbeta"]),
        num_draws=req["num_steps"] - req["num_burnin_steps"], num_chains=req["chains"],
        num_burnin_steps=req["num_burnin_steps"], num_steps_bw_draws=1, init_loss=req["init_loss"],
        cores=1, seed=req["seed"], device=wl["device"], verbose=False,
    )
    return np.array([out[f"llc-chain/{c}"] for c in range(req["chains"])])


def run_v2(wl: dict, req: dict) -> np.ndarray:
    from devinterp.optim import SGMCMC
    from devinterp.slt.sampler import sample_single_chain

    loss = LOSSES[wl["loss"]]
    dataset = BatchDictDataset(wl["x"], wl["y"])
    if req.get("fresh_batches"):
        n, need = wl["x"].shape[0], req["num_steps"] * wl["batch_size"]
        dataset = TiledDictDataset(wl["x"], wl["y"], -(-need // n) * n)
    model = wl["model"]
    masks = {name: None for name, _ in model.named_parameters()}  # every parameter sampled

    def evaluate(m, data):
        return loss(m(data["input_ids"][0]), data["y"][0]), {}

    lam = []
    for c in range(req["chains"]):
        draws: list[float] = []

        def on_draw(*, loss, **_):
            draws.append(float(loss))

        seed = req["seed"] * 1000 + c
        sample_single_chain(
            model, dataset, evaluate, masks,
            num_draws=req["num_steps"] - req["num_burnin_steps"], num_burnin_steps=req["num_burnin_steps"],
            num_steps_bw_draws=1, sampling_method=SGMCMC.sgld,
            sampling_method_kwargs=dict(lr=wl["epsilon"], localization=wl["gamma"], nbeta=req["nbeta"]),
            chain=c, seed=seed, dataloader_seed=seed, device=wl["device"], callbacks=[on_draw],
            batch_size=wl["batch_size"],
        )
        lam.append(req["nbeta"] * (np.mean(draws) - req["init_loss"]) if draws else float("nan"))
    return np.array(lam)


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    major = int(version("devinterp").split(".")[0])
    run = run_v1 if major < 2 else run_v2
    wl = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "load":
            wl = torch.load(req["path"], weights_only=False)
            reply = {"ok": True, "version": version("devinterp")}
        elif req["op"] == "run":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and "nbeta passed in" notices
                t = time.perf_counter()
                lam = run(wl, req)
                dt = time.perf_counter() - t
            reply = {"seconds": dt, "lambdahat": [float(v) for v in lam]}
        else:
            raise SystemExit(f"unknown op {req['op']!r}")
        sys.stdout.write(REPLY + json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
