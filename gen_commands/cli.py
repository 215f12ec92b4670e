"""The one command line of every sweep generator, driven by a per-experiment :class:`Spec`.

A generator module (``gen_commands/expt_<name>.py``) is its spec: the experiment and
script, the presets, the list-valued :class:`Axis` options (flag, config key, type,
check), the defaults, and a ``lines`` function saying how the resolved sweep becomes
``with k=v`` lines. This module builds the parser from the spec, resolves
defaults → preset → explicit options, checks every axis value, parses ``--grid``,
picks the observer and writes the file (``sweep.generator_main``)::

    SPEC = cli.Spec(experiment="dln_saddle_dynamics", script="experiments/expt_dln_saddle_dynamics.py",
                    description=__doc__, presets=PRESETS, axes=AXES, lines=cli.crossed_lines)
    build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

Every parser has ``OUT``, ``--preset``, the spec's options, the axes, ``--seeds``,
``--grid`` and the line format (``--expt-name``, the spec's ``line_options`` among
``--device``/``--data-root``, ``-F``/``-m``, ``--python``, ``--force``).

No torch is imported here (generators must start fast).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

from gen_commands import sweep


@dataclasses.dataclass(frozen=True)
class Check:
    """A bound on every value of an option: ``ok(value)``, and ``what`` it means for the error message."""
    ok: Callable[[Any], bool]
    what: str


def at_least(lo) -> Check:
    return Check(lambda v: v >= lo, f">= {lo}")


def above(lo) -> Check:
    return Check(lambda v: v > lo, f"> {lo}")


def check_values(flag: str, values, check: Check | None) -> None:
    """ValueError naming ``flag`` and the offending values unless every value passes ``check``."""
    if check is None or values is None:
        return
    bad = [v for v in values if not check.ok(v)]
    if bad:
        raise ValueError(f"{flag} values must be {check.what}; got {bad}")


@dataclasses.dataclass(frozen=True)
class Axis:
    """A list-valued option ``--<dest>`` whose values are crossed and written as ``key=value``.

    ``whole``: the option's list is one value, written as a list on every line (``samplers=[...]``);
    ``single``: the option takes one value, written on every line; ``wrap``: each value is written
    as ``wrap(value)`` (``num_training_data=[n]``).
    """
    dest: str
    key: str
    type: Callable[[str], Any] | None = None
    help: str = ""
    check: Check | None = None
    choices: Sequence | None = None
    metavar: str | tuple | None = None
    whole: bool = False
    single: bool = False
    wrap: Callable[[Any], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    def add_to(self, group) -> None:
        kwargs = dict(help=self.help)
        if not self.single:
            kwargs["nargs"] = "+"
        for name in ("type", "choices", "metavar"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        group.add_argument(self.flag, **kwargs)

    def values(self, value) -> list:
        """The values this axis writes, one per line, for the resolved setting ``value``."""
        if self.whole:
            return [list(value)]
        if self.single:
            return [value]
        return [self.wrap(v) for v in value] if self.wrap else value


def sampler_axes(config: str, label: str, steps_help: str | None = None) -> tuple[Axis, Axis, Axis]:
    """The step size ε (> 0), localisation γ (>= 0) and step count (>= 1) axes of the sampler config ``config``
    (``--<config less _config>-epsilon`` writes ``<config>.epsilon``, and so on); ``label`` names the sampler in
    the help, ``steps_help`` replaces the step count's (default ``<label> steps``)."""
    dest = config.removesuffix("_config")
    return (
        Axis(f"{dest}_epsilon", f"{config}.epsilon", float, f"{config}.epsilon: {label} step size (> 0)", above(0)),
        Axis(f"{dest}_gamma", f"{config}.gamma", float, f"{config}.gamma: {label} localisation (>= 0)", at_least(0)),
        Axis(f"{dest}_steps", f"{config}.num_steps", int, f"{config}.num_steps: {steps_help or label + ' steps'}",
             at_least(1)),
    )


@dataclasses.dataclass
class Sweep:
    """One resolved call: what ``Spec.lines`` turns into command lines."""
    spec: "Spec"
    args: argparse.Namespace
    settings: Any        # Spec.resolve's result (a dict of option values for the axis generators)
    grid: dict           # the --grid axes, parsed
    observer: str        # -F DIR or -m URL
    source: str          # the store the observer writes to (DIR or URL)

    @property
    def expt_name(self):
        """--expt-name, else the preset's name, else None (not written)."""
        return self.args.expt_name if self.args.expt_name is not None else self.args.preset

    def fixed(self) -> dict:
        """expt_name and the line options (device, data_root) that were given, in the spec's order."""
        out = {} if self.expt_name is None else {"expt_name": self.expt_name}
        for dest in self.spec.line_options:
            value = getattr(self.args, dest)
            if value is not None:
                out[dest] = value
        return out

    def axes(self, axes: Sequence[Axis] | None = None) -> dict:
        """:func:`axis_values` of ``axes`` (default the spec's) for the resolved settings."""
        return axis_values(self.spec.axes if axes is None else axes, self.settings)

    def command(self, overrides: Mapping[str, Any], experiment: str | None = None, prefix: str = "") -> str:
        """One line; ``experiment`` names the run key's experiment (default the spec's), ``prefix`` goes
        before the observer flag (a Sacred command name)."""
        return sweep.format_command(self.spec.script, experiment or self.spec.experiment, overrides,
                                    prefix + self.observer, self.args.python)


def axis_values(axes: Sequence[Axis], settings: Mapping) -> dict:
    """``{config key: values}`` of the axes whose setting is not None, in the order of ``axes``."""
    return {a.key: a.values(settings[a.dest]) for a in axes if settings.get(a.dest) is not None}


def resolve_axes(spec: "Spec", args: argparse.Namespace) -> dict:
    """:func:`resolve_preset` of the chosen preset (or none)."""
    return resolve_preset(spec, args, spec.presets[args.preset] if args.preset else {})


def resolve_preset(spec: "Spec", args: argparse.Namespace, preset: Mapping) -> dict:
    """``spec.base``, then ``preset``, then every option given; each axis checked; then ``spec.validate``."""
    s = dict(spec.base)
    s.update(preset)
    for dest in dict.fromkeys([*spec.base, *(a.dest for a in spec.axes), "seeds"]):
        value = getattr(args, dest, None)
        if value is not None:
            s[dest] = value
    for axis in spec.axes:
        check_values(axis.flag, [s[axis.dest]] if axis.single and s.get(axis.dest) is not None else s.get(axis.dest),
                     axis.check)
    if spec.validate is not None:
        spec.validate(s, args)
    return s


def crossed_lines(sw: Sweep, tail: Sequence[Mapping] = ({},)) -> list[str]:
    """The fixed keys, then the axes and --grid crossed (last fastest), then the seed (``--seeds``, else the
    preset's, else 0; none when --grid sets seed), then each ``tail`` dict, varying fastest."""
    axes = {**sw.axes(), **sw.grid}  # a --grid axis replaces the option's values, keeping the key's position
    fixed = sw.fixed()
    seeds = (sw.settings.get("seeds") or [0]) if "seed" not in sw.grid else [None]
    lines = []
    for combo in sweep.cartesian(axes):
        for seed in seeds:
            for part in tail:
                run = {**fixed, **combo, **({} if seed is None else {"seed": seed}), **part}
                lines.append(sw.command(run))
    return lines


_LINE_OPTIONS = {
    "device": dict(choices=("auto", "cpu", "cuda"), help="device config entry (default: not written, i.e. auto)"),
    "data_root": dict(help="data_root config entry (default: not written)"),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What makes one generator: the experiment, its presets and axes, and how a sweep becomes lines."""
    experiment: str                          # Sacred Experiment name (run keys, default store runs/<name>)
    script: str                              # experiments/expt_<name>.py, written on every line
    description: str                         # the generator's --help text (its module docstring)
    presets: Mapping[str, Any]
    lines: Callable[[Sweep], Iterable[str]] = crossed_lines
    axes: Sequence[Axis] = ()
    base: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # values no preset or option set
    resolve: Callable[["Spec", argparse.Namespace], Any] = resolve_axes
    validate: Callable[[dict, argparse.Namespace], None] | None = None  # cross-option checks, may edit
    options: Callable[[argparse.ArgumentParser], None] | None = None    # options that are not axes
    axes_title: str = "axes (each a list of values; all lists are crossed; unset -> the experiment's default)"
    seeds_help: str | None = "run seeds (default 0)"                    # None: no --seeds option
    grid_help: str = "extra axis over any config key, e.g. \"seed=[0, 1]\""
    reserved: Mapping[str, str] = dataclasses.field(default_factory=dict)  # --grid keys refused -> why
    line_options: Sequence[str] = ("device",)
    epilog: str | None = None
    preset_required: bool = False
    after: Callable | None = None            # after(args, path) -> exit code, once the file is written
    check_args: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None

    @property
    def default_runs_dir(self) -> str:
        return f"runs/{self.experiment}"

    def build_parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python gen_commands/expt_{self.script.rsplit('expt_', 1)[1]}",
                                    description=self.description, epilog=self.epilog,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
        p.add_argument("--preset", choices=sorted(self.presets), required=self.preset_required,
                       help="named sweep; other options override its values")
        if self.options is not None:
            self.options(p)
        g = p.add_argument_group(self.axes_title)
        for axis in self.axes:
            axis.add_to(g)
        if self.seeds_help is not None:
            g.add_argument("--seeds", type=int, nargs="+", help=self.seeds_help)
        g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]", help=self.grid_help)
        g = p.add_argument_group("line format")
        g.add_argument("--expt-name", help="expt_name config entry, a label for plots (default: the preset's name)")
        for dest in self.line_options:
            g.add_argument("--" + dest.replace("_", "-"), **_LINE_OPTIONS[dest])
        obs = g.add_mutually_exclusive_group()
        obs.add_argument("-F", "--file-storage", metavar="DIR",
                         help=f"record with a FileStorageObserver in DIR (default {self.default_runs_dir})")
        obs.add_argument("-m", "--mongo", metavar="HOST:PORT:DB", help="record with a MongoObserver instead")
        g.add_argument("--python", default="python",
                       help="interpreter written at the start of each line (default python)")
        g.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
        return p

    def parse_grid(self, args: argparse.Namespace) -> dict:
        """--grid, parsed; a reserved key (run_key always) is refused with the spec's reason."""
        grid = sweep.parse_grid(args.grid)
        reserved = {sweep.RUN_KEY: "the generator computes it", **self.reserved}
        for key, why in reserved.items():
            if key in grid:
                raise ValueError(f"--grid cannot set {key}: {why}")
        return grid

    def sweep(self, args: argparse.Namespace) -> Sweep:
        """The resolved call (settings, --grid, observer); raises ValueError naming the option."""
        settings = self.resolve(self, args)
        grid = self.parse_grid(args)
        source = args.mongo or args.file_storage or self.default_runs_dir
        observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else sweep.observer_flag(file_storage=source)
        return Sweep(self, args, settings, grid, observer, source)

    def generate(self, args: argparse.Namespace) -> list[str]:
        """The command lines of ``args``, in a deterministic order."""
        return list(self.lines(self.sweep(args)))

    def main(self, argv: Sequence[str] | None = None) -> int:
        parser = self.build_parser()

        def generate(args):
            if self.check_args is not None:
                self.check_args(parser, args)
            return self.generate(args)

        return sweep.generator_main(parser, generate, argv, after=self.after)
