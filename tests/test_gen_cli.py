"""The spec-driven generator CLI (gen_commands.cli): expected command files written out by hand.

Each expected line is spelled out in full; its run key is recomputed here from the definition
(sha256 of the experiment name, a newline and the sorted compact JSON of the overrides), not
with sweep.run_key.
"""
import hashlib
import importlib
import json
import subprocess
import sys

import pytest

from gen_commands import cli
from tests.conftest import REPO

GENERATORS = ["expt_abc_params", "expt_basis_decomposition", "expt_chaos", "expt_dln", "expt_dln_saddle_dynamics",
              "expt_llc_curve", "expt_mala_vs_sgld", "expt_rescaling_invariance", "expt_sgd_regimes"]


def key(experiment: str, overrides: dict) -> str:
    text = json.dumps(overrides, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{experiment}\n{text}".encode()).hexdigest()


def line(script: str, store: str, experiment: str, words: str, overrides: dict) -> str:
    return f"python {script} -F {store} with {words} run_key={key(experiment, overrides)}"


def generated(module: str, tmp_path, *argv) -> list[str]:
    gen = importlib.import_module(f"gen_commands.{module}")
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), *argv]) == 0
    return out.read_text().splitlines()


def test_saddle_cpu_preset_is_the_line_written_here(tmp_path):
    overrides = {"expt_name": "cpu", "width": 10, "training_config.learning_rate": 0.0003,
                 "training_config.num_steps": 6000, "logging_period": 100, "seed": 0}
    expected = line("experiments/expt_dln_saddle_dynamics.py", "runs/dln_saddle_dynamics", "dln_saddle_dynamics",
                    "expt_name=cpu width=10 training_config.learning_rate=0.0003 training_config.num_steps=6000 "
                    "logging_period=100 seed=0", overrides)
    assert generated("expt_dln_saddle_dynamics", tmp_path, "--preset", "cpu") == [expected]


def test_mala_small_grid_crosses_n_settings_and_seeds_in_order(tmp_path):
    # n is written as a one-element list per line; num_chains follows in AXES order; seeds vary fastest.
    expected = []
    for n in (100, 300):
        for seed in (1, 2):
            overrides = {"num_training_data": [n], "num_chains": 2, "seed": seed}
            expected.append(line("experiments/expt_mala_vs_sgld.py", "runs/x", "mala_vs_sgld",
                                 f"num_training_data='[{n}]' num_chains=2 seed={seed}", overrides))
    assert generated("expt_mala_vs_sgld", tmp_path, "--n", "100", "300", "--num-chains", "2",
                     "--seeds", "1", "2", "-F", "runs/x") == expected


def test_rescaling_per_alpha_writes_one_line_per_alpha_after_the_seed(tmp_path):
    # samplers is one list-valued key on every line (Axis.whole); alphas/first_alpha_index come last.
    expected = []
    for k, alpha in enumerate((0.5, 2.0)):
        overrides = {"layer_sizes": [1, 2, 1], "samplers": ["sgld", "psgld"], "seed": 0, "alphas": [alpha],
                     "first_alpha_index": k}
        expected.append(line("experiments/expt_rescaling_invariance.py", "runs/rescaling_invariance",
                             "rescaling_invariance",
                             # shlex.quote of "['sgld', 'psgld']": each inner ' closes, escapes and reopens
                             "layer_sizes='[1, 2, 1]' samplers='['\"'\"'sgld'\"'\"', '\"'\"'psgld'\"'\"']' "
                             f"seed=0 alphas='[{alpha}]' "
                             f"first_alpha_index={k}", overrides))
    assert generated("expt_rescaling_invariance", tmp_path, "--layer-sizes", "[1, 2, 1]", "--samplers", "sgld", "psgld",
                     "--alphas", "0.5", "2", "--per-alpha") == expected


def test_grid_axis_replaces_an_option_in_place_and_grid_seed_drops_the_seeds(tmp_path):
    # --grid width=[3] takes width's position (first); a --grid seed axis replaces the seed loop.
    expected = []
    for seed in (7, 8):
        overrides = {"width": 3, "training_config.num_steps": 5, "seed": seed}
        expected.append(line("experiments/expt_dln_saddle_dynamics.py", "runs/dln_saddle_dynamics",
                             "dln_saddle_dynamics", f"width=3 training_config.num_steps=5 seed={seed}", overrides))
    assert generated("expt_dln_saddle_dynamics", tmp_path, "--width", "10", "--steps", "5",
                     "--grid", "width=[3]", "--grid", "seed=[7, 8]") == expected


# A toy spec: the CLI's own behaviour, independent of any experiment.
TOY = cli.Spec(
    experiment="toy", script="experiments/expt_toy.py", description="toy", presets={"two": dict(a=[1, 2], seeds=[5])},
    axes=(cli.Axis("a", "a", int, "a", cli.at_least(1)), cli.Axis("b", "sub.b", float, "b", cli.above(0), single=True),
          cli.Axis("c", "c", help="c", whole=True)),
    reserved={"c": "use --c"},
)


def toy(*argv) -> list[str]:
    return TOY.generate(TOY.build_parser().parse_args(["out", *argv]))


def test_toy_spec_preset_then_options_then_fixed_keys():
    assert toy("--preset", "two", "--b", "0.5", "--c", "x", "y", "--device", "cpu") == [
        line("experiments/expt_toy.py", "runs/toy", "toy",
             f"expt_name=two device=cpu a={a} sub.b=0.5 c='['\"'\"'x'\"'\"', '\"'\"'y'\"'\"']' seed=5",
             {"expt_name": "two", "device": "cpu", "a": a, "sub.b": 0.5, "c": ["x", "y"], "seed": 5})
        for a in (1, 2)]
    # without a preset or options: one line, seed 0, nothing else written
    assert toy() == [line("experiments/expt_toy.py", "runs/toy", "toy", "seed=0", {"seed": 0})]


@pytest.mark.parametrize("argv, message", [
    (["--a", "0", "2"], "--a values must be >= 1; got [0]"),
    (["--b", "0"], "--b values must be > 0; got [0.0]"),
    (["--grid", "c=[1]"], "--grid cannot set c: use --c"),
    (["--grid", "run_key=['x']"], "--grid cannot set run_key: the generator computes it"),
])
def test_toy_spec_errors_name_the_option_and_what_arrived(argv, message):
    with pytest.raises(ValueError) as err:
        toy(*argv)
    assert str(err.value) == message


@pytest.mark.parametrize("module", GENERATORS)
def test_every_generator_is_its_spec(module):
    gen = importlib.import_module(f"gen_commands.{module}")
    assert isinstance(gen.SPEC, cli.Spec) and gen.main == gen.SPEC.main
    assert (gen.SPEC.experiment, gen.SPEC.script) == (gen.EXPERIMENT, gen.SCRIPT)
    assert (REPO / gen.SCRIPT).is_file()


def test_generator_runs_as_a_script_and_experiments_import_as_a_package(tmp_path):
    # no sys.path edits: the repo root on PYTHONPATH (or the editable install) is all that is needed
    out = tmp_path / "c.txt"
    subprocess.run([sys.executable, str(REPO / "gen_commands" / "expt_dln_saddle_dynamics.py"), str(out),
                    "--preset", "cpu"], check=True, cwd=REPO, capture_output=True)
    assert len(out.read_text().splitlines()) == 1
    # a regular package (experiments/__init__.py), not a namespace package; find_spec imports no torch
    code = ("import experiments, importlib.util; assert experiments.__file__.endswith('__init__.py'); "
            "assert importlib.util.find_spec('experiments.expt_dln') is not None")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- presets read from the experiments' named configs (gen_commands.presets) ---------------------------------

def test_named_config_reader_flattens_literals_and_refuses_code(tmp_path):
    from gen_commands import presets

    script = tmp_path / "expt_toy.py"
    script.write_text(
        "N = [1, 2]\n"
        "@ex.named_config\n"
        "def small():\n"
        "    \"\"\"doc\"\"\"\n"
        "    width = 5  # comment\n"
        "    training_config = dict(num_steps=10, lr=1e-3, inner=dict(a=None))\n"
        "    sizes = [1, 2, 3]\n"
        "@ex.named_config\n"
        "def coded():\n"
        "    width = len(N)\n"
        "@ex.named_config\n"
        "def derived():\n"
        "    width = 4\n"
        "    seed = 64 if width == 4 else 0\n")
    assert presets.named_config(str(script), "small") == {
        "width": 5, "training_config.num_steps": 10, "training_config.lr": 1e-3, "training_config.inner.a": None,
        "sizes": [1, 2, 3]}
    assert list(presets.named_config(str(script), "small")) == [
        "width", "training_config.num_steps", "training_config.lr", "training_config.inner.a", "sizes"]
    assert presets.constant(str(script), "N") == [1, 2]
    with pytest.raises(ValueError, match="coded:width is not a literal: len"):
        presets.named_config(str(script), "coded")
    with pytest.raises(KeyError, match="no named config 'large'"):
        presets.named_config(str(script), "large")
    # a skipped key is not read, so its code does not raise; the others still are
    assert presets.named_config(str(script), "derived", skip={"seed"}) == {"width": 4}
    with pytest.raises(ValueError, match="derived:seed is not a literal"):
        presets.named_config(str(script), "derived")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("script, name", [
    ("expt_dln_saddle_dynamics", "paper"), ("expt_dln_saddle_dynamics", "cpu"), ("expt_llc_curve", "readme"),
    ("expt_rescaling_invariance", "paper_small"), ("expt_chaos", "cgd_original"), ("expt_sgd_regimes", "perceptron"),
    ("expt_basis_decomposition", "beta_domin"), ("expt_basis_decomposition", "vit"),
    ("expt_abc_params", "ip_non_centered_calibrated"),
])
def test_the_source_reading_of_a_named_config_is_what_sacred_resolves(script, name):
    # Independent of the ast reader: Sacred runs the named config scope; every key read must resolve to that value.
    from gen_commands import presets
    from tests.conftest import load_experiment

    read = presets.named_config(f"experiments/{script}.py", name)
    run = load_experiment(script).ex.run("print_config", named_configs=[name], options={"--loglevel": "ERROR"})
    resolved = _flat(run.config)
    assert read and {k: resolved[k] for k in read} == read
