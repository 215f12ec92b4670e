"""core.checks: each check accepts its boundary, rejects just past it, and names key, expectation and value."""
import argparse
import math
import re

import pytest

from core.checks import (
    CheckError,
    at_most,
    boolean,
    cli_type,
    distinct_names,
    int_list,
    integer,
    known_entries,
    number,
    number_list,
    one_of,
    parse_bool,
    path,
)

NOT_NUMBERS = [True, False, "1", None, [1], 1j]


def raises(message: str):
    """pytest.raises for the whole message, matched literally."""
    return pytest.raises(CheckError, match="^" + re.escape(message) + "$")


def test_integer_accepts_its_bounds_and_rejects_one_past_them():
    assert integer("k", 1) == 1 and integer("k", 0, lo=0) == 0 and integer("k", -1, lo=-1) == -1
    assert integer("k", 5, lo=0, hi=5) == 5 and integer("k", 10**30) == 10**30
    with raises("k must be an integer >= 1; got 0"):
        integer("k", 0)
    with raises("k must be an integer >= -1; got -2"):
        integer("k", -2, lo=-1)
    with raises("k must be an integer in [0, 5]; got 6"):
        integer("k", 6, lo=0, hi=5)
    with raises("k must be an integer <= 3; got 4"):
        integer("k", 4, lo=None, hi=3)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, math.nan])
def test_integer_rejects_bool_float_str_none(value):
    with pytest.raises(CheckError, match=r"^k must be an integer >= 0; got "):
        integer("k", value, lo=0)


def test_integer_none_ok_and_from_float():
    assert integer("k", None, none_ok=True) is None
    with raises("k must be None or an integer >= 1; got 0"):
        integer("k", 0, none_ok=True)
    value = integer("k", 1e5, from_float=True)
    assert value == 100000 and type(value) is int
    with raises("k must be an integer >= 1; got 2.5"):
        integer("k", 2.5, from_float=True)
    with raises("k must be an integer >= 1; got 0"):  # 0.0 -> 0, then the bound fails on the int
        integer("k", 0.0, from_float=True)


def test_number_bounds_open_closed_and_strict():
    assert number("x", 0, lo=0) == 0.0 and type(number("x", 3, lo=0)) is float
    assert number("x", 1, lo=0, hi=1) == 1.0 and number("x", -7.5) == -7.5
    with raises("x must be a finite number >= 0; got -1e-300"):
        number("x", -1e-300, lo=0)
    with raises("x must be a finite number > 0; got 0.0"):
        number("x", 0.0, lo=0, strict=True)
    assert number("x", 5e-324, lo=0, strict=True) == 5e-324  # the smallest float above the bound
    with raises("x must be a number in [0, 1]; got 1.0000000000000002"):  # closed interval: "finite" goes unsaid
        number("x", math.nextafter(1.0, 2.0), lo=0, hi=1)
    with raises("x must be a number in (0, 1]; got 0"):
        number("x", 0, lo=0, hi=1, strict=True)
    with raises("x must be a finite number <= 2; got 3"):
        number("x", 3, hi=2)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf] + NOT_NUMBERS)
def test_number_rejects_nan_inf_bool_and_non_numbers(value):
    with pytest.raises(CheckError, match=r"^x must be a finite number; got "):
        number("x", value)


def test_number_hi_open_excludes_the_upper_bound():
    assert number("m", 0, lo=0, hi=1, hi_open=True) == 0.0
    assert number("m", math.nextafter(1.0, 0.0), lo=0, hi=1, hi_open=True) < 1  # the largest float below 1
    with raises("m must be a number in [0, 1); got 1"):
        number("m", 1, lo=0, hi=1, hi_open=True)
    with raises("m must be a finite number < 2; got 2.0"):
        number("m", 2.0, hi=2, hi_open=True)
    with raises("m must be a number in [0, 1); got nan"):
        number("m", math.nan, lo=0, hi=1, hi_open=True)


def test_why_goes_in_parentheses_before_the_value():
    with raises("w must be an integer >= 1 (16 is the paper's size); got 0"):
        integer("w", 0, why="16 is the paper's size")
    with raises("a must be a finite number > 0 (only then); got -1"):
        number("a", -1, lo=0, strict=True, why="only then")
    with raises("m must be one of ('a',) (for arch='x'); got 'b'"):
        one_of("m", "b", ("a",), why="for arch='x'")
    with raises("u must be a list of integers in [1, 3] (not unit 0); got [0]"):
        int_list("u", [0], lo=1, hi=3, min_len=0, why="not unit 0")
    err = CheckError("k", "an integer", 0, "because")
    assert (err.expected, err.why) == ("an integer", "because")


def test_number_finite_false_lets_inf_through_but_not_nan():
    assert number("x", math.inf, lo=0, strict=True, finite=False) == math.inf
    with raises("x must be a number > -1; got nan"):
        number("x", math.nan, lo=-1, strict=True, finite=False)
    with raises("x must be a number > -1; got -inf"):
        number("x", -math.inf, lo=-1, strict=True, finite=False)


def test_number_none_ok():
    assert number("x", None, none_ok=True) is None
    with raises("x must be None or a finite number > 0; got 0"):
        number("x", 0, lo=0, strict=True, none_ok=True)
    with raises("x must be a finite number; got None"):
        number("x", None)


def test_boolean():
    assert boolean("b", True) is True and boolean("b", False) is False
    for value in (0, 1, "yes", None, 1.0):
        with raises(f"b must be True or False; got {value!r}"):
            boolean("b", value)


def test_one_of_lists_the_allowed_values_including_dict_keys():
    assert one_of("m", "b", ("a", "b")) == "b" and one_of("m", None, (None, "x")) is None
    with raises("m must be one of ('a', 'b'); got 'c'"):
        one_of("m", "c", ("a", "b"))
    with raises("m must be one of ('float32', 'float64'); got 'float16'"):
        one_of("m", "float16", {"float32": 0, "float64": 1})


def test_int_list():
    assert int_list("s", (3, 1)) == [3, 1] and int_list("s", [], min_len=0) == []
    assert int_list("u", [1, 19], lo=1, hi=19, min_len=0) == [1, 19]
    with raises("s must be a non-empty list of integers >= 1; got []"):
        int_list("s", [])
    with raises("s must be a list of >= 3 integers >= 1; got [3, 2]"):
        int_list("s", [3, 2], min_len=3)
    with raises("u must be a list of integers in [1, 19]; got [20]"):
        int_list("u", [20], lo=1, hi=19, min_len=0)
    for bad in ([1, True], [1, 2.0], 3, "12", None):
        with pytest.raises(CheckError, match="^s must be a non-empty list of integers >= 1; got "):
            int_list("s", bad)


def test_int_list_from_float_takes_integral_floats_as_ints():
    out = int_list("t", [10, 1e4], from_float=True)
    assert out == [10, 10000] and all(type(t) is int for t in out)
    with raises("t must be a non-empty list of integers >= 1; got [2.5]"):
        int_list("t", [2.5], from_float=True)
    with raises("t must be a non-empty list of integers >= 1; got [0]"):  # 0.0 -> 0, then the bound fails
        int_list("t", [0.0], from_float=True)


def test_number_list():
    assert number_list("a", [1, 0.5], lo=0, strict=True) == [1.0, 0.5]
    with raises("a must be a non-empty list of finite numbers > 0; got [1.0, 0.0]"):
        number_list("a", [1.0, 0.0], lo=0, strict=True)
    for bad in ([], [math.inf], [math.nan], [True], 1.0, ["1"]):
        with pytest.raises(CheckError, match="^a must be a non-empty list of finite numbers; got "):
            number_list("a", bad)


def test_distinct_names():
    assert distinct_names("s", ("y", "x"), ("x", "y")) == ["y", "x"]
    for bad in ([], ["x", "x"], ["z"], "x", None):
        with raises(f"s must be a non-empty list of distinct names from ('x', 'y'); got {bad!r}"):
            distinct_names("s", bad, ("x", "y"))


def test_path():
    assert path("p", "runs/1") == "runs/1" and path("p", None, none_ok=True) is None
    for bad in ("", 3, None):
        with raises(f"p must be a path; got {bad!r}"):
            path("p", bad)
    with raises("p must be None or a path; got ''"):
        path("p", "", none_ok=True)


def test_at_most_names_the_limit_and_its_source():
    at_most("b", 100, "n", 100)
    with raises("b must be <= n (100); got 101"):
        at_most("b", 101, "n", 100)
    with raises("b must be <= n (100); got nan"):
        at_most("b", math.nan, "n", 100)


def test_known_entries_names_the_unknown_and_the_allowed():
    known_entries("cfg", {"a": 1}, ("a", "b"))
    with pytest.raises(ValueError, match=r"^cfg has unknown entries \['c', 'd'\]; allowed: \['a', 'b'\]$"):
        known_entries("cfg", {"d": 0, "a": 1, "c": 2}, ("b", "a"))


def test_check_error_is_a_value_error_carrying_its_parts():
    with pytest.raises(ValueError) as info:
        integer("sgld_config.num_steps", 0)
    err = info.value
    assert (err.key, err.expected, err.value) == ("sgld_config.num_steps", "an integer >= 1", 0)


def test_cli_type_through_argparse(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("-j", type=cli_type(integer, lo=1))
    p.add_argument("--eps", type=cli_type(number, float, lo=0, strict=True))
    args = p.parse_args(["-j", "3", "--eps", "1e-3"])
    assert args.j == 3 and args.eps == 1e-3
    for argv, message in ((["-j", "0"], "argument -j: must be an integer >= 1; got '0'"),
                          (["-j", "two"], "argument -j: must be an integer >= 1; got 'two'"),
                          (["--eps", "nan"], "argument --eps: must be a finite number > 0; got 'nan'")):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        assert message in capsys.readouterr().err


def test_parse_bool_with_cli_type(capsys):
    assert parse_bool("True") is True and parse_bool("False") is False and parse_bool("true") == "true"
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--flag", type=cli_type(boolean, parse_bool))
    assert p.parse_args(["--flag", "False"]).flag is False
    with pytest.raises(SystemExit):
        p.parse_args(["--flag", "1"])
    assert "argument --flag: must be True or False; got '1'" in capsys.readouterr().err


# --- the library's own validation goes through these checks ------------------------------
# One bad value per converted module: the error is a CheckError whose key and value are the
# ones passed, so a module that slips back to a hand-written message fails here.

def _gen():
    import torch
    return torch.Generator().manual_seed(0)


def _param():
    import torch
    return torch.nn.Parameter(torch.ones(2))


def _eye():
    import torch
    return torch.eye(2)


def _call(module: str, name: str, *args, **kwargs):
    def call():
        import importlib
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return call


MODULE_CASES = [
    (_call("dynamics.regimes_config", "RegimesConfig", alpha=1.0, dt=0.1, bs=0), "bs", 0),
    (_call("dynamics.schedules", "LRSchedule", 0.1, -1, 0.0, 0.1, 1), "lr_setting[1] (epoch_warm)", -1),
    (_call("dynamics.schedules", "make_loss", "hinge"), "loss_fn", "hinge"),
    (lambda: _call("dynamics.perturb", "perturbation_direction", "sideways", 3, _gen())(), "perturb_strat", "sideways"),
    (_call("dynamics.cgd", "OptimConfig", momentum=1.0), "momentum", 1.0),  # [0, 1): the bound itself fails
    (_call("dynamics.train", "TrainingConfig", learning_rate=math.inf), "learning_rate", math.inf),
    (_call("dynamics.basis", "saturation_times", [0.0, 1.0], [[1.0], [1.0]], level=0.0), "level", 0.0),
    (_call("dynamics.abc_train", "CoordCheckConfig", n_seeds=0), "n_seeds", 0),
    (_call("dynamics.lyapunov", "init_lyapunov", 3, 4), "k", 4),
    (lambda: _call("dynamics.lars", "LARS", [_param()], lr=0.1, momentum=-1.0)(), "momentum", -1.0),
    (lambda: _call("dynamics.symeig", "dense_eigh", _eye(), -1.0)(), "eps_eigh", -1.0),
    (_call("models.abc", "make_parameterization", "mup", 0), "L", 0),
    (lambda: _call("models.regimes", "build_model", "mlp", (3,), 0, "relu", 1, _gen())(), "h", 0),
    (_call("models.relu_mlp", "ReLUMLP", [3]), "layer_sizes", [3]),
    (lambda: _call("models.dln", "init_weight", (2, 2), _gen(), "xavier")(), "init", "xavier"),
    (_call("models.basis_nets", "check_width", True), "width", True),
    (lambda: _call("models.chaos_nets", "build_model", "mlp", (1, 16, 16), 10, _gen(), inter_dim=0)(),
     "model.inter_dim", 0),
    (_call("data.regimes", "build_dataset", "sign", 0, 10, 0, 0, d=3), "ptr", 0),
    (lambda: _call("data.synthetic", "sample_inputs", 0, 2, "uniform", _gen())(), "n", 0),
    (_call("data.vision", "load_vision_dataset", "mnist", size=0), "size", 0),
    (_call("gen_commands.sweep", "parse_grid", ["a=3"]), "--grid a", "3"),
]


@pytest.mark.parametrize("call, key, value", MODULE_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(MODULE_CASES)])
def test_modules_raise_check_error_naming_the_key(call, key, value):
    with pytest.raises(CheckError) as info:
        call()
    err = info.value
    assert err.key == key and str(err).startswith(f"{key} must be ")
    assert err.value == value


def test_flat_splits_check_n_val_against_the_training_split(monkeypatch):
    import torch

    import data.splits

    def fake(dataset, train, **kwargs):  # 10 training images, 4 test images, 1x2x2
        n = 10 if train else 4
        return torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.int64)

    monkeypatch.setattr(data.splits, "load_vision_dataset", fake)
    with raises("n_val must be an integer in [0, 8] (leaving at least 2 of the 10 training examples); got 9"):
        data.splits.load_flat_splits("mnist", None, 9, 2, torch.Generator(), "cpu")
    with raises("batch_size must be <= the training examples left after n_val (7); got 8"):
        data.splits.load_flat_splits("mnist", None, 3, 8, torch.Generator(), "cpu")


def test_mongo_timeout_env_is_checked(monkeypatch):
    from tracking import mongo

    for raw, shown in (("-1", -1.0), ("soon", "soon")):
        monkeypatch.setenv(mongo.TIMEOUT_ENV, raw)
        with raises(f"{mongo.TIMEOUT_ENV} must be a number > 0 (seconds); got {shown!r}"):
            mongo.timeout_s()
    monkeypatch.setenv(mongo.TIMEOUT_ENV, "2.5")
    assert mongo.timeout_s() == 2.5


def test_llc_curve_generator_rejects_a_non_boolean_force_realisable(tmp_path, capsys):
    from gen_commands import expt_llc_curve

    with pytest.raises(SystemExit):
        expt_llc_curve.main([str(tmp_path / "r.txt"), "--force-realisable", "yes"])
    assert "argument --force-realisable: must be True or False; got 'yes'" in capsys.readouterr().err
