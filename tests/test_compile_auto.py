"""compile = "auto" | True | False: which step runs, that it is recorded, and bad values.

The "auto" rule is tested with a monkeypatched threshold, never with timings. Most
tests replace torch.compile by the identity, so the compiled path's own step
function (vmap(grad_and_value), coefficient tensor) runs uncompiled and fast; one
slow test compiles for real.
"""
import pytest
import torch
from torch.utils.data import TensorDataset

import llc.sgld as sgld
from llc.estimate import estimate_llc
from llc.mala import MALAConfig, estimate_llc_mala
from llc.psgld import PSGLDConfig, estimate_llc_psgld
from llc.sgld import SGLDConfig, run_sgld
from tests.cases import dln_case, mse

CFG = dict(epsilon=1e-4, gamma=2.0, batch_size=10, nbeta=30.0)


@pytest.fixture
def identity_compile(monkeypatch):
    """torch.compile -> the function itself, counting calls; an empty step cache."""
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(fn)
        return fn

    monkeypatch.setattr(sgld, "_COMPILED", type(sgld._COMPILED)())
    monkeypatch.setattr(sgld.torch, "compile", fake_compile)
    return calls


def test_default_is_auto():
    assert SGLDConfig().compile == "auto"
    net, _, _, x, y = dln_case(n=100)
    res = estimate_llc(net, mse, (x, y), num_steps=5, batch_size=10, num_chains=2)
    assert res.config.compile == "auto"


@pytest.mark.parametrize("bad", ["yes", "Auto", "true", 1, 0, None, 1.0])
def test_bad_compile_value_names_the_key(bad):
    with pytest.raises(ValueError, match=r"compile must be one of 'auto', True, False"):
        SGLDConfig(compile=bad)
    net, _, _, x, y = dln_case(n=100)
    with pytest.raises(ValueError, match="compile"):
        estimate_llc(net, mse, (x, y), num_steps=5, batch_size=10, compile=bad)


def test_auto_threshold_rule(monkeypatch):
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 60)
    assert not SGLDConfig(num_chains=3, num_steps=19, compile="auto").wants_compile()  # 57 < 60
    assert SGLDConfig(num_chains=3, num_steps=20, compile="auto").wants_compile()  # 60: the boundary compiles
    assert SGLDConfig(num_chains=1, num_steps=19, compile=True).wants_compile()
    assert not SGLDConfig(num_chains=30, num_steps=1000, compile=False).wants_compile()


def test_auto_runs_eager_below_and_compiled_above(monkeypatch, identity_compile):
    _, loss, w, x, y = dln_case(n=200)
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 60)
    below = run_sgld(loss, w, x, y, SGLDConfig(**CFG, num_chains=3, num_steps=19), seed=1)
    assert below.compile_mode == "eager" and not below.compiled and identity_compile == []
    above = run_sgld(loss, w, x, y, SGLDConfig(**CFG, num_chains=3, num_steps=20), seed=1)
    assert above.compile_mode == "compiled" and above.compiled and len(identity_compile) == 1
    # The same run eager: the same draws, and float64 step functions that differ only in
    # operation order, so agreement to ~1e-13 relative, far below the 1e-9 asserted.
    eager = run_sgld(loss, w, x, y, SGLDConfig(**CFG, num_chains=3, num_steps=20, compile=False), seed=1)
    torch.testing.assert_close(above.loss, eager.loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(above.final_w, eager.final_w, rtol=1e-9, atol=1e-12)


def test_recorded_path_in_result_and_summary(identity_compile):
    net, _, _, x, y = dln_case(n=200)
    kw = dict(num_steps=20, batch_size=10, num_chains=2, nbeta=30.0, epsilon=1e-4)
    eager = estimate_llc(net, mse, (x, y), compile=False, **kw)
    assert (eager.compiled, eager.summary()["compiled"], eager.summary()["compile_mode"]) == (False, False, "eager")
    comp = estimate_llc(net, mse, (x, y), compile=True, **kw)
    assert (comp.compiled, comp.summary()["compiled"], comp.summary()["compile_mode"]) == (True, True, "compiled")
    streamed = estimate_llc(net, mse, TensorDataset(x, y), compile=True, **kw)
    assert streamed.compile_mode == "compiled"
    # Compiled and eager estimates of one seed agree to float64 rounding (see above).
    assert comp.lambdahat == pytest.approx(eager.lambdahat, rel=1e-9, abs=1e-9)
    assert streamed.lambdahat == pytest.approx(eager.lambdahat, rel=1e-9, abs=1e-9)


def test_failed_compile_is_recorded_as_fallback(monkeypatch):
    _, loss, w, x, y = dln_case(n=200)

    def broken_compile(fn, **kwargs):
        def raises(*args):
            raise RuntimeError("no C compiler")
        return raises

    monkeypatch.setattr(sgld, "_COMPILED", type(sgld._COMPILED)())
    monkeypatch.setattr(sgld.torch, "compile", broken_compile)
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 1)
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as record:
        out = run_sgld(loss, w, x, y, SGLDConfig(**CFG, num_chains=2, num_steps=10), seed=1)  # auto, above
    assert len(record) == 1  # one warning, not one per step
    assert out.compile_mode == "eager-fallback" and not out.compiled
    eager = run_sgld(loss, w, x, y, SGLDConfig(**CFG, num_chains=2, num_steps=10, compile=False), seed=1)
    assert torch.equal(out.loss, eager.loss)


@pytest.mark.slow
def test_real_compile_matches_eager_lambdahat():
    """torch.compile for real (a few seconds on CPU): λ̂ equal to the eager λ̂ to float64 rounding.

    Inductor fuses and reorders the update's sums, so the two differ by rounding only:
    float64 rounding (1e-16) over 40 contractive steps (ε nβ λ_max(H) < 1 here) stays
    below 1e-12 relative; 1e-9 leaves a wide margin and still catches any change of
    formula (a wrong coefficient moves λ̂ by O(1)).
    """
    net, _, _, x, y = dln_case(n=300)
    kw = dict(num_steps=40, batch_size=16, num_chains=3, nbeta=20.0, epsilon=1e-4, gamma=3.0, seed=4)
    eager = estimate_llc(net, mse, (x, y), compile=False, **kw)
    comp = estimate_llc(net, mse, (x, y), compile=True, **kw)
    assert comp.compile_mode == "compiled"
    assert comp.lambdahat == pytest.approx(eager.lambdahat, rel=1e-9, abs=1e-9)
    torch.testing.assert_close(torch.as_tensor(comp.loss_trace), torch.as_tensor(eager.loss_trace),
                               rtol=1e-9, atol=1e-12)


# --- pSGLD and MALA: no compiled step, so "auto" resolves to eager and True is an error ---

@pytest.mark.parametrize("cls", [PSGLDConfig, MALAConfig])
def test_psgld_and_mala_compile_values(cls):
    assert cls().compile == "auto" and cls(compile=False).compile is False
    for bad in ("yes", "Auto", 1, 0, None):
        with pytest.raises(ValueError, match=r"compile must be one of 'auto', True, False"):
            cls(compile=bad)
    with pytest.raises(ValueError, match=r"compile=True: .* has no compiled step"):
        cls(compile=True)


@pytest.mark.parametrize("compile_", ["auto", False])
def test_psgld_and_mala_run_eager_and_record_it(monkeypatch, identity_compile, compile_):
    """Even with the auto threshold at 1 chain-step, pSGLD and MALA run eager, compile nothing, and say so."""
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 1)
    _, loss, w, x, y = dln_case(n=200)
    cfg = SGLDConfig(**CFG, num_chains=2, num_steps=10, compile=False)
    p = estimate_llc_psgld(loss, w, x, y, cfg, PSGLDConfig(compile=compile_), seed=1)
    m = estimate_llc_mala(loss, w, x, y, MALAConfig(epsilon=1e-5, num_steps=10, num_chains=2, compile=compile_), seed=1)
    assert p.compile_mode == "eager" and m.llc.compile_mode == "eager" and identity_compile == []
    # the key changes nothing else: the same numbers as the default config (exact: the same eager code ran)
    assert p.lambdahat == estimate_llc_psgld(loss, w, x, y, cfg, PSGLDConfig(), seed=1).lambdahat
    m0 = estimate_llc_mala(loss, w, x, y, MALAConfig(epsilon=1e-5, num_steps=10, num_chains=2), seed=1)
    assert m.llc.lambdahat == m0.llc.lambdahat


MVS = dict(device="cpu", input_dim=3, layer_widths=[4, 2], num_training_data=[50], epsilon=1e-3, num_steps=10,
           num_chains=2, sgld_config=dict(batch_size=20), mala_acceptance_every=5, seed=1)
RESC = dict(device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[1.0], degenerate_units=[2], seed=1,
            psgld_config=dict(num_steps=10, batch_size=20, num_chains=2, num_burnin_steps=5),
            sgld_config=dict(epsilon=1e-4, num_steps=10, batch_size=20, num_chains=2, num_burnin_steps=5))


def test_mala_vs_sgld_compile_keys_reach_the_samplers(identity_compile):
    from tests.conftest import load_experiment

    expt = load_experiment("expt_mala_vs_sgld")
    cfg = expt.ex.run("print_config").config
    assert cfg["sgld_config"]["compile"] == "auto" and cfg["mala_config"]["compile"] == "auto"
    for value, mode in ((True, "compiled"), (False, "eager")):
        r = expt.ex.run(config_updates={**MVS, "sgld_config": dict(batch_size=20, compile=value)}).result
        assert (r["sgld"]["compile_mode"], r["mala"]["compile_mode"]) == ([mode], ["eager"])
    for key, value, match in (("sgld_config", "yes", r"sgld_config\.compile must be one of 'auto', True, False"),
                              ("mala_config", 1, r"mala_config\.compile must be one of 'auto', True, False"),
                              ("mala_config", True, r"mala_config\.compile=True: MALA .* has no compiled step")):
        with pytest.raises(ValueError, match=match):
            expt.ex.run(config_updates={**MVS, key: {"compile": value}})


def test_rescaling_compile_keys_reach_the_samplers(identity_compile):
    from tests.conftest import load_experiment

    expt = load_experiment("expt_rescaling_invariance")
    cfg = expt.ex.run("print_config").config
    assert cfg["sgld_config"]["compile"] == "auto" and cfg["psgld_config"]["compile"] == "auto"
    sg = dict(RESC["sgld_config"], compile=True)
    r = expt.ex.run(config_updates={**RESC, "sgld_config": sg, "samplers": ["sgld", "psgld"],
                                    "mala_acceptance_every": None}).result
    assert (r["sgld"]["compile_mode"], r["psgld"]["compile_mode"]) == (["compiled"], ["eager"])
    with pytest.raises(ValueError, match=r"psgld_config\.compile=True: pSGLD .* has no compiled step"):
        expt.ex.run(config_updates={**RESC, "psgld_config": dict(RESC["psgld_config"], compile=True)})
    with pytest.raises(ValueError, match=r"sgld_config\.compile=True compiles only the plain 'sgld' sampler"):
        expt.ex.run(config_updates={**RESC, "sgld_config": sg})  # default samplers and mala_acceptance_every=20
