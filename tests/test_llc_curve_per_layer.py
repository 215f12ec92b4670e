"""expt_llc_curve's llc_per_layer option: λ̂ of each layer at every checkpoint (llc.restricted)."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from llc.restricted import estimate_llc_per_layer, layer_groups
from tests.test_llc_curve import expt, run, tiny  # noqa: F401  (the fixture and the tiny config; cifar: conftest)


def test_per_layer_series_exist_and_equal_a_direct_call_at_the_checkpoint(expt, cifar, tmp_path, monkeypatch):  # noqa: F811
    saved = []  # (model copy at the checkpoint, kwargs) per call, in eval mode as the experiment samples

    def spy(model, loss_fn, data, **kwargs):
        saved.append((copy.deepcopy(model), loss_fn, data, kwargs))
        return estimate_llc_per_layer(model, loss_fn, data, **kwargs)

    full_seeds = []
    real_flat = expt.estimate_llc_flat

    def spy_flat(*args, seed, **kwargs):
        full_seeds.append(seed)
        return real_flat(*args, seed=seed, **kwargs)

    monkeypatch.setattr(expt, "estimate_llc_per_layer", spy)
    monkeypatch.setattr(expt, "estimate_llc_flat", spy_flat)
    config = tiny(cifar, seed=5, llc_per_layer="parameter", training_config=dict(num_steps=2, batch_size=8),
                  model_data_config=dict(model_name="resnet18_cifar", layer_width_factor=1))
    r = run(expt, tmp_path, **config)
    checkpoints = r.info["checkpoints"]
    assert [c["t"] for c in checkpoints] == [0, 2] and len(saved) == 2
    names = list(layer_groups(saved[0][0], by="parameter"))
    assert len(names) == len(list(saved[0][0].parameters()))  # one group per parameter tensor
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    for name in names:  # one series per parameter tensor, one value per checkpoint
        assert metrics[f"llc/layer/{name}"]["steps"] == [0, 2]
    assert not any(k.startswith("llc/layer/") and k[len("llc/layer/"):] not in names for k in metrics)
    recorded = [{d["name"]: d["lambdahat"] for d in c["layers"]} for c in checkpoints]
    assert all(c["layer_status"] == "ok" and list(rec) == names for c, rec in zip(checkpoints, recorded))
    # The training moved the weights between the two checkpoints: the saved copies differ.
    assert not torch.equal(saved[0][0].fc.weight, saved[1][0].fc.weight)

    # Each checkpoint's per-layer seed is its full λ̂'s (distinct per checkpoint); a fresh model
    # loaded with the saved parameters and buffers gives the same numbers.
    assert [kw["seed"] for *_, kw in saved] == full_seeds and len(set(full_seeds)) == 2
    for k, (model, loss_fn, data, kwargs) in enumerate(saved):
        assert kwargs["by"] == "parameter" and loss_fn is F.cross_entropy
        fresh = expt.build_resnet("resnet18_cifar", 10, base_channels=1)
        fresh.load_state_dict(model.state_dict())
        fresh.eval()
        direct = estimate_llc_per_layer(fresh, loss_fn, data, **kwargs)
        assert set(direct) == set(names)
        for name in names:
            # Same weights, buffers, data and seed on CPU: the same float operations, bit for bit.
            assert metrics[f"llc/layer/{name}"]["values"][k] == direct[name].lambdahat
            assert recorded[k][name] == direct[name].lambdahat


def test_per_layer_by_module_groups_weight_and_bias(expt, cifar, tmp_path):  # noqa: F811
    r = run(expt, tmp_path, **tiny(cifar, llc_per_layer="module", training_config=dict(num_steps=2, batch_size=8),
                                   model_data_config=dict(model_name="resnet18_cifar", layer_width_factor=1)))
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    layers = {k[len("llc/layer/"):] for k in metrics if k.startswith("llc/layer/")}
    assert "fc" in layers and "fc.weight" not in layers and "bn1" in layers  # fc.weight + fc.bias -> 'fc'
    assert all(metrics[f"llc/layer/{name}"]["steps"] == [0, 2] for name in layers)
    assert r.info["checkpoints"][0]["layer_status"] == "ok"


def test_per_layer_is_off_by_default_and_validated(expt, cifar, tmp_path):  # noqa: F811
    r = run(expt, tmp_path, **tiny(cifar, training_config=dict(num_steps=2, batch_size=8)))
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert not any(k.startswith("llc/layer/") for k in metrics) and "layers" not in r.info["checkpoints"][0]
    with pytest.raises(ValueError, match="llc_per_layer must be one of"):
        run(expt, **tiny(cifar, llc_per_layer="block"))
