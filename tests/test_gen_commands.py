"""Sweep generators: safe grid parsing, run keys, command lines Sacred reads back, presets.

All fast and torch-free: the generator runs in-process through ``main(argv)``.
"""
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gen_commands import expt_dln as gen
from gen_commands import sweep
from gen_commands.commands import (
    CommandsFileError,
    config_overrides,
    format_ranges,
    parse_command,
    parse_ranges,
    read_commands,
)

REPO = Path(__file__).resolve().parents[1]


overrides_of = config_overrides


def generate(tmp_path, *args, name="cmds.txt") -> list[str]:
    out = tmp_path / name
    assert gen.main([str(out), *args]) == 0
    return out.read_text().splitlines()


# --- grid values ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("[1, 2, 3]", [1, 2, 3]),
    ("[2**i for i in range(-3, 1)]", [0.125, 0.25, 0.5, 1]),
    ("[10**-k for k in range(3)]", [1, 0.1, 0.01]),
    ("[[w] * 2 for w in [5, 10]]", [[5, 5], [10, 10]]),
    ("[i * j for i in range(1, 3) for j in [1, 10] if i * j != 2]", [1, 10, 20]),
    ("['sgd', 'adam']", ["sgd", "adam"]),
    ("[round(1e-6 * 2**-i, 10) for i in range(2)]", [1e-6, 5e-7]),
    ("1e-5", 1e-5),
])
def test_parse_value_accepts_literals_and_simple_comprehensions(text, expected):
    assert sweep.parse_value(text) == expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')",
    "[x.__class__ for x in [1]]",
    "open('/etc/passwd')",
    "[i for i in range(10**9)]",
    "2**10**10",
    "[lambda: 1]",
    "[sgd, adam]",
])
def test_parse_value_refuses_code(text):
    with pytest.raises(ValueError):
        sweep.parse_value(text)


def test_parse_grid_and_cartesian_keep_the_given_order():
    grid = sweep.parse_grid(["sgld_config.gamma=[1.0, 10.0]", "seed=[2**i for i in range(2)]"])
    assert grid == {"sgld_config.gamma": [1.0, 10.0], "seed": [1, 2]}
    assert sweep.cartesian(grid) == [
        {"sgld_config.gamma": 1.0, "seed": 1}, {"sgld_config.gamma": 1.0, "seed": 2},
        {"sgld_config.gamma": 10.0, "seed": 1}, {"sgld_config.gamma": 10.0, "seed": 2},
    ]
    assert sweep.cartesian({}) == [{}]


@pytest.mark.parametrize("spec, message", [
    ("gamma", "key=[v1"), ("9x=[1]", "dotted config key"), ("a=[]", "non-empty list"),
    ("a=3", "non-empty list"), ("a=[foo]", "quote strings"),
])
def test_parse_grid_errors_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        sweep.parse_grid([spec])


# --- run keys and command lines -------------------------------------------------------

def test_run_key_is_sha256_of_name_and_canonical_json():
    overrides = {"seed": 1, "layer_widths": [5, 6], "sgld_config.epsilon": 1e-6}
    body = json.dumps({"layer_widths": [5, 6], "seed": 1, "sgld_config.epsilon": 1e-6},
                      sort_keys=True, separators=(",", ":"))
    expected = hashlib.sha256(f"dln_lambdahat\n{body}".encode()).hexdigest()
    assert sweep.run_key("dln_lambdahat", overrides) == expected
    assert sweep.run_key("dln_lambdahat", dict(reversed(list(overrides.items())))) == expected
    assert sweep.run_key("dln_lambdahat", {**overrides, "run_key": "x"}) == expected
    assert sweep.run_key("other", overrides) != expected
    assert sweep.run_key("dln_lambdahat", {**overrides, "seed": 2}) != expected


@pytest.mark.parametrize("value", [
    [5, 6, 4], "rand_rank", "True", "None", "1e5", "12345", "x y", "it's", "a=b", "", None, True, False,
    0, -3, 5e-07, 1.0, 1e20, {"a": 1, "b": [1.5, "c"]}, [[1, 2], [3]],
])
def test_format_value_round_trips_through_shell_and_sacred(value):
    from sacred.arg_parser import _convert_value  # what Sacred does with `with key=value`

    (token,) = shlex.split(f"key={sweep.format_value(value)}")
    parsed = _convert_value(token.split("=", 1)[1])
    assert parsed == value and type(parsed) is type(value)


def test_format_value_quotes_lists_like_the_original_scripts():
    assert sweep.format_value([5, 6, 4]) == "'[5, 6, 4]'"
    assert sweep.format_value("rand_rank") == "rand_rank"
    assert sweep.format_value(2e-07) == "2e-07"
    with pytest.raises(ValueError, match="non-finite"):
        sweep.format_value(float("nan"))


def test_format_command_appends_the_run_key_and_parses_back():
    overrides = {"layer_widths": [5, 6], "true_param_config.method": "rand_rank", "seed": 3}
    line = sweep.format_command("experiments/expt_dln.py", "dln_lambdahat", overrides, "-F runs/x y")
    assert line.startswith("python experiments/expt_dln.py -F runs/x y with layer_widths='[5, 6]'")
    cmd = parse_command(line)
    assert cmd.run_key == sweep.run_key("dln_lambdahat", overrides)
    assert overrides_of(line) == {**overrides, "run_key": cmd.run_key}


def test_observer_flag_takes_exactly_one_store():
    assert sweep.observer_flag(file_storage="runs/a b") == "-F 'runs/a b'"
    assert sweep.observer_flag(mongo="localhost:27017:dln") == "-m localhost:27017:dln"
    with pytest.raises(ValueError):
        sweep.observer_flag()


# --- the expt_dln generator --------------------------------------------------------------

def test_generator_is_deterministic_and_refuses_to_overwrite(tmp_path):
    a = generate(tmp_path, "--num-runs", "5", "--seed", "3", name="a.txt")
    b = generate(tmp_path, "--num-runs", "5", "--seed", "3", name="b.txt")
    c = generate(tmp_path, "--num-runs", "5", "--seed", "4", name="c.txt")
    assert a == b and a != c and len(a) == 5
    with pytest.raises(SystemExit) as exc:
        gen.main([str(tmp_path / "a.txt"), "--num-runs", "1"])
    assert exc.value.code == 2
    assert generate(tmp_path, "--num-runs", "1", "--force", name="a.txt") != a


def test_every_line_has_a_seed_and_the_run_key_of_its_overrides(tmp_path):
    lines = generate(tmp_path, "--num-runs", "3", "--epsilon", "1e-6", "5e-7", "--seeds", "1", "2",
                     "--grid", "sgld_config.gamma=[1, 10]")
    assert len(lines) == 3 * 2 * 2 * 2
    for line in lines:
        ov = overrides_of(line)
        assert isinstance(ov["seed"], int)
        key = ov.pop("run_key")
        assert key == sweep.run_key(gen.EXPERIMENT, ov)
        assert line.split(" with ")[0] == f"python {gen.SCRIPT} -F {gen.DEFAULT_RUNS_DIR}"
    # Order: architecture, then settings (epsilon before gamma, as on the line), then seed.
    first = [overrides_of(x) for x in lines[:8]]
    assert [(o["sgld_config.epsilon"], o["sgld_config.gamma"], o["seed"]) for o in first] == [
        (1e-6, 1, 1), (1e-6, 1, 2), (1e-6, 10, 1), (1e-6, 10, 2),
        (5e-7, 1, 1), (5e-7, 1, 2), (5e-7, 10, 1), (5e-7, 10, 2)]
    assert len({json.dumps(o["layer_widths"]) for o in first}) == 1


def test_architectures_share_one_drawn_seed_across_settings(tmp_path):
    lines = generate(tmp_path, "--num-runs", "4", "--n", "1000", "2000", "--batch", "100")
    seeds = [overrides_of(x)["seed"] for x in lines]
    assert seeds[0::2] == seeds[1::2] and len(set(seeds)) == 4


@pytest.mark.parametrize("preset, widths, layers, n, eps, steps", [
    ("paper1", (5, 50), (2, 5), 100_000, 5e-7, 10_000),
    ("paper2", (5, 100), (2, 10), 100_000, 5e-7, 10_000),
    ("paper3", (50, 500), (2, 10), 1_000_000, 1e-7, 50_000),
    ("paper4", (100, 1000), (2, 20), 1_000_000, 2e-8, 50_000),
    ("paper5", (500, 2000), (2, 20), 1_000_000, 2e-8, 50_000),
    ("paper6", (500, 3000), (2, 40), 1_000_000, 2e-8, 50_000),
])
def test_paper_presets_match_reference_table(tmp_path, preset, widths, layers, n, eps, steps):
    lines = generate(tmp_path, "--preset", preset, "--num-runs", "30", "-m", "localhost:27017:dln")
    assert len(lines) == 30
    for line in lines:
        assert " -m localhost:27017:dln with " in line
        ov = overrides_of(line)
        assert ov["expt_name"] == preset
        assert layers[0] <= len(ov["layer_widths"]) <= layers[1]
        assert all(widths[0] <= w <= widths[1] for w in ov["layer_widths"] + [ov["input_dim"]])
        assert (ov["num_training_data"], ov["sgld_config.epsilon"], ov["sgld_config.num_steps"]) == (n, eps, steps)
        assert ov["true_param_config.method"] == "rand_rank"
        assert ov["sgld_config.batch_size"] == 500 and ov["training_config.batch_size"] == 500
        assert ov["do_training"] is True


def test_demo_preset_is_small_random_rand_rank(tmp_path):
    lines = generate(tmp_path, "--preset", "demo", "-F", "runs/dln_lambdahat")
    assert len(lines) >= 6
    for line in lines:
        ov = overrides_of(line)
        assert 2 <= len(ov["layer_widths"]) <= 4 and 5 <= ov["input_dim"] <= 20
        assert all(5 <= w <= 20 for w in ov["layer_widths"])
        assert ov["true_param_config.method"] == "rand_rank" and ov["sgld_config.num_chains"] >= 2
        assert ov["sgld_config.batch_size"] <= ov["num_training_data"] and ov["do_training"] is False
    assert len({json.dumps(overrides_of(x)["layer_widths"]) for x in lines}) > 1


def test_explicit_options_override_a_preset(tmp_path):
    lines = generate(tmp_path, "--preset", "paper1", "--num-runs", "2", "--steps", "100", "--no-training",
                     "--expt-name", "mine", "--device", "cpu")
    ov = overrides_of(lines[0])
    assert ov["sgld_config.num_steps"] == 100 and ov["do_training"] is False
    assert "training_config.num_steps" not in ov
    assert ov["expt_name"] == "mine" and ov["device"] == "cpu"


def test_grid_replaces_a_sampled_key(tmp_path):
    lines = generate(tmp_path, "--num-runs", "2", "--grid", "layer_widths=[[3, 3], [4]]", "--grid", "seed=[7]")
    assert [overrides_of(x)["layer_widths"] for x in lines] == [[3, 3], [4], [3, 3], [4]]
    assert all(overrides_of(x)["seed"] == 7 for x in lines)


def test_ranges_are_half_open_like_the_original_generator(tmp_path):
    """The original drew with np.random.randint(LO, HI): HI excluded, so "layers 2-5" is 2..4 layers.
    400 draws see every value of each small range (miss probability < 3·(2/3)^400), and never HI."""
    def drawn(*extra):
        lines = generate(tmp_path, "--num-runs", "400", "--widths", "2", "5", "--layers", "1", "4", *extra, "--force")
        ov = [overrides_of(x) for x in lines]
        return ({len(o["layer_widths"]) for o in ov}, {w for o in ov for w in o["layer_widths"]},
                {o["input_dim"] for o in ov})
    assert drawn() == ({1, 2, 3}, {2, 3, 4}, {2, 3, 4})
    assert drawn("--range-upper", "inclusive") == ({1, 2, 3, 4}, {2, 3, 4, 5}, {2, 3, 4, 5})


def test_paper_preset_draws_the_original_ranges(tmp_path):
    lines = generate(tmp_path, "--preset", "paper1", "--num-runs", "300")
    ov = [overrides_of(x) for x in lines]
    assert {len(o["layer_widths"]) for o in ov} == {2, 3, 4}  # the original's "layer2-5"
    widths = [w for o in ov for w in o["layer_widths"]] + [o["input_dim"] for o in ov]
    assert min(widths) == 5 and max(widths) == 49  # "width5-50"; ~1200 draws hit both ends (miss < 1e-10)


@pytest.mark.parametrize("args, message", [
    (["--widths", "5", "2"], "--widths expects LO <= HI"),
    (["--layers", "0", "2"], "--layers values must be >= 1"),
    (["--layers", "3", "3"], "--layers expects LO < HI with --range-upper exclusive"),
    (["--prop-rank-reduce", "1.5"], "--prop-rank-reduce values must be in [0, 1]"),
    (["--batch", "500", "--n", "100"], "--batch must be <= every --n"),
    (["--epsilon", "0"], "--epsilon values must be > 0"),
    (["--steps", "100", "--burnin", "100"], "--burnin values must be in"),
    (["--method", "lowrank"], "invalid choice: 'lowrank'"),
    (["--num-runs", "0"], "--num-runs must be >= 1"),
    (["--grid", "run_key=['x']"], "cannot set run_key"),
    (["--grid", "seed=[__import__('os')]"], "--grid seed"),
    (["-F", "a", "-m", "b"], "not allowed with argument"),
])
def test_generator_errors_name_the_option(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        gen.main([str(tmp_path / "x.txt"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_generator_script_starts_without_torch(tmp_path):
    code = ("import sys, gen_commands.expt_dln, gen_commands.run, gen_commands.pending;"
            "bad = [m for m in ('torch', 'sacred') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    out = tmp_path / "demo.txt"
    subprocess.run([sys.executable, "gen_commands/expt_dln.py", str(out), "--preset", "demo"], cwd=REPO, check=True)
    assert len(out.read_text().splitlines()) >= 6


# --- commands files ----------------------------------------------------------------------

def test_read_commands_finds_store_and_key_and_skips_comments(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# header\n\npython a.py -F 'runs/a b' with x=1 run_key=abc\n"
                 "python a.py --mongo_db=h:27017:db with run_key='\"123\"'\npython a.py with y=2\n")
    a, b, c = read_commands(f)
    assert (a.lineno, a.store.kind, a.store.location, a.run_key) == (3, "file", "runs/a b", "abc")
    assert (b.lineno, b.store.kind, b.store.location, b.run_key) == (4, "mongo", "h:27017:db", "123")
    assert (c.lineno, c.store, c.run_key) == (5, None, None)


@pytest.mark.parametrize("text, message", [
    ("python a.py with x='[1, 2\n", ":1: malformed line"),
    ("python a.py -F\n", "-F needs a value"),
    ("python a.py -m with x=1\n", "-m needs a value"),
    ("python a.py -m bad/db with x=1\n", "-m expects"),
    ("python a.py with run_key=\n", "empty run_key"),
])
def test_malformed_lines_are_named(tmp_path, text, message):
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(CommandsFileError, match=message):
        read_commands(f)


def test_missing_commands_file(tmp_path):
    with pytest.raises(CommandsFileError, match="not found"):
        read_commands(tmp_path / "nope.txt")


def test_array_ranges_round_trip():
    assert format_ranges([9, 3, 7, 8]) == "3,7-9"
    assert format_ranges([1, 2, 3]) == "1-3" and format_ranges([]) == ""
    assert parse_ranges("3,7-9") == [3, 7, 8, 9]
    with pytest.raises(ValueError):
        parse_ranges("3-1")


def test_write_lines_creates_parents_and_respects_force(tmp_path):
    path = tmp_path / "a" / "b.txt"
    sweep.write_lines(path, ["x", "y"])
    assert path.read_text() == "x\ny\n"
    with pytest.raises(FileExistsError, match="--force"):
        sweep.write_lines(path, ["z"])
    sweep.write_lines(path, ["z"], force=True)
    assert path.read_text() == "z\n"
