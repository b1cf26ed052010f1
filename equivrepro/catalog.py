"""The catalog of tasks: what each task declares for reproduction, read from ``configs/reproduce/<task>.yaml``.

A task card names the task's experiments (smoke / paper), its embedded data generators, its sweeps
(Hydra multirun overrides per scale), its figures, its analysis defaults, the table columns its sweeps
vary and, optionally, its efficiency study (``efficiency``: model families at a few sizes compared at equal
compute; :class:`EfficiencySpec`, run by :mod:`equivrepro.efficiency`). Shared code, the scripts and the
Makefile discover tasks from the cards only, so adding a task means adding its folder, its configs
(including its card) and its tests — nothing here changes.

Figure names are ``<task>-<name>``. Every task gets the :data:`STANDARD_FIGURES` on its ``default`` sweep
without declaring them; the cross-task ``headline`` figure draws the default sweeps of the tasks that are
part of ``make reproduce`` (``in_reproduce: true``).

Command line (used by the Makefile)::

    python -m equivrepro.catalog tasks              # task names, one line
    python -m equivrepro.catalog figures [--reproduce]
    python -m equivrepro.catalog data --data-dir DIR   # build the missing embedded data files
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CARDS_DIR",
    "SCALES",
    "STANDARD_FIGURES",
    "HEADLINE",
    "SweepSpec",
    "FigureSpec",
    "EmbeddedData",
    "TaskCard",
    "cards",
    "card",
    "sweeps",
    "figures",
    "reproduce_figures",
    "drawing_function",
    "CatalogError",
    "EfficiencyFamily",
    "EfficiencySpec",
    "MEAN_OVER_SUFFIXES",
]

CARDS_DIR = Path(__file__).resolve().parents[1] / "configs" / "reproduce"
SCALES = ("smoke", "paper")
HEADLINE = "headline"

#: figures every task has, on its ``default`` sweep: name → (drawing function, description)
STANDARD_FIGURES: dict[str, tuple[str, str]] = {
    "pct": ("pct_curves", "pct vs training step (one curve per evaluation suffix)"),
    "losses": ("loss_decomposition", "L_total / L_mean / L_equiv with the trivial predictor's and the baseline's loss"),
    # the degree spectrum of L_equiv, its angle curve and its per-entity map (runs with equivariance.spectrum_l_max set)
    "spectrum-shares": ("spectrum.degree_shares", "E_l / L_total by angular degree l vs training step, stacked, with L_mean above"),
    "spectrum": ("spectrum.final_spectrum", "E_l / L_equiv at the end of training (bars ± SE), degrees finite twirls remove marked"),
    "angle": ("spectrum.angle_curve", "error vs rotation angle at the end of training: measured and predicted from the spectrum"),
    "attribution": ("spectrum.attribution", "share of L_equiv per entity bin (element / distance / sequence position / radius)"),
}

_CARD_KEYS = {
    "task",
    "title",
    "order",
    "in_reproduce",
    "experiments",
    "embedded_data",
    "dimensions",
    "sweeps",
    "figures",
    "without_figures",
    "analysis",
    "figure_defaults",
    "efficiency",
}
_FIGURE_KEYS = {"sweeps", "draw", "about", "kwargs", "paper_kwargs", "reproduce"}


#: model configs an efficiency family may name (``configs/model/<name>.yaml``)
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
_EFFICIENCY_KEYS = {"about", "base", "families", "reference", "twirled", "metric", "fit_from_step"}
_FAMILY_KEYS = {"models", "overrides", "equivariant", "about", "fit_from_step"}
#: ``efficiency.metric.suffix`` value: the headline loss is the mean over the task's evaluation suffixes
MEAN_OVER_SUFFIXES = "mean"


class CatalogError(ValueError):
    """A task card is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class SweepSpec:
    """One Hydra multirun per scale: ``python -m equivrepro.train -m <overrides>``."""

    task: str
    name: str
    about: str
    smoke: tuple[str, ...]
    paper: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.task}-{self.name}"

    def overrides(self, scale: str) -> tuple[str, ...]:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        return getattr(self, scale)

    def command(self, scale: str) -> str:
        return "python -m equivrepro.train -m " + " ".join(self.overrides(scale))


@dataclass(frozen=True)
class FigureSpec:
    """A figure: the sweeps whose runs it draws (``SweepSpec.key``\\ s) and how (``equivrepro.plots.figures.<draw>``)."""

    name: str
    task: str | None
    sweeps: tuple[str, ...]
    draw: str
    about: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    paper_kwargs: Mapping[str, Any] = field(default_factory=dict)
    reproduce: bool = False

    def call_kwargs(self, scale: str) -> dict[str, Any]:
        return {**self.kwargs, **(self.paper_kwargs if scale == "paper" else {})}


@dataclass(frozen=True)
class EmbeddedData:
    """A data file that ships with no download: ``python -m <module> --out <data_dir>/<path> <args>``."""

    path: str
    module: str
    args: tuple[str, ...] = ()

    def command(self, data_dir: str | Path) -> list[str]:
        return [sys.executable, "-m", self.module, "--out", str(Path(data_dir) / self.path), *self.args]


@dataclass(frozen=True)
class EfficiencyFamily:
    """One model family of the efficiency study: its model configs per scale (smallest first) and the overrides
    that make it that family; ``equivariant``: exactly equivariant by construction (pct ≈ 0); ``fit_from_step``:
    per scale, replaces the study's (None: the study's)."""

    label: str
    models: Mapping[str, tuple[str, ...]]
    overrides: Mapping[str, tuple[str, ...]]
    equivariant: bool = False
    about: str = ""
    fit_from_step: Mapping[str, int] | None = None


@dataclass(frozen=True)
class EfficiencySpec:
    """The efficiency study of a task (card block ``efficiency``): equal-compute comparison of model families.

    ``base[scale]``: overrides every run starts from; ``reference``: the non-equivariant (augmented) family the
    others are measured against; ``twirl_from`` / ``twirl_k``: the family whose runs give the derived test-time
    twirled families (one per K); ``term`` (None: the task's primary term) and ``suffix`` (an evaluation suffix,
    or :data:`MEAN_OVER_SUFFIXES`) name the headline held-out loss; ``fit_from_step[scale]``: evaluations before
    this step (the trivial-predictor plateau) do not enter the fits.
    """

    task: str
    about: str
    base: Mapping[str, tuple[str, ...]]
    families: Mapping[str, EfficiencyFamily]
    reference: str
    twirl_from: str | None
    twirl_k: tuple[int, ...]
    term: str | None
    suffix: str
    fit_from_step: Mapping[str, int]

    def overrides(self, family: str, scale: str) -> tuple[str, ...]:
        """The Hydra multirun of one family at one scale: base, ``model=<a>,<b>,…``, the family's overrides (a family
        override of a key the base sets replaces it in place)."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        fam = self.families[family]
        merged = {o.split("=", 1)[0]: o for o in (*self.base[scale], "model=" + ",".join(fam.models[scale]))}
        merged.update({o.split("=", 1)[0]: o for o in fam.overrides[scale]})
        return tuple(merged.values())

    def fit_from(self, family: str, scale: str) -> int:
        """The first step whose evaluation enters the fits of ``family``."""
        own = self.families[family].fit_from_step
        return int((own or self.fit_from_step)[scale])


@dataclass(frozen=True)
class TaskCard:
    task: str
    title: str
    order: int
    in_reproduce: bool
    experiments: Mapping[str, str]
    embedded_data: tuple[EmbeddedData, ...]
    dimensions: tuple[str, ...]
    sweeps: Mapping[str, SweepSpec]
    figures: Mapping[str, FigureSpec]
    analysis: Mapping[str, Any]
    source: Path
    without_figures: tuple[str, ...] = ()
    efficiency: EfficiencySpec | None = None

    @property
    def default_sweep(self) -> SweepSpec:
        return self.sweeps["default"]


def _require(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise CatalogError(f"{path}: {msg}")


def _split(text: Any, path: Path, where: str) -> tuple[str, ...]:
    _require(isinstance(text, str) and text.strip() != "", path, f"{where} must be a non-empty string of Hydra overrides")
    return tuple(text.split())


def _per_scale(value: Any, path: Path, where: str, parse, allow_shared: bool = True) -> dict[str, Any]:
    """``{smoke: …, paper: …}`` or (``allow_shared``) one value for both scales, each parsed by ``parse(v, where)``."""
    if isinstance(value, dict):
        _require(set(value) == set(SCALES), path, f"{where} must give {' and '.join(SCALES)}, got {sorted(value)}")
        return {s: parse(value[s], f"{where}.{s}") for s in SCALES}
    _require(allow_shared, path, f"{where} must be a mapping with {' and '.join(SCALES)}")
    parsed = parse(value, where)
    return {s: parsed for s in SCALES}


def _load_efficiency(raw: Any, task: str, path: Path) -> EfficiencySpec:
    _require(isinstance(raw, dict), path, "efficiency must be a mapping")
    unknown = set(raw) - _EFFICIENCY_KEYS
    _require(not unknown, path, f"efficiency: unknown keys {sorted(unknown)} (allowed: {sorted(_EFFICIENCY_KEYS)})")

    def overrides(v: Any, where: str) -> tuple[str, ...]:
        _require(v is None or isinstance(v, str), path, f"{where} must be a string of Hydra overrides")
        return tuple((v or "").split())

    def models(v: Any, where: str) -> tuple[str, ...]:
        _require(
            isinstance(v, list) and v and all(isinstance(m, str) for m in v),
            path,
            f"{where} must be a non-empty list of model config names (configs/model/<name>.yaml), smallest first",
        )
        missing = [m for m in v if not (MODEL_CONFIG_DIR / f"{m}.yaml").exists()]
        _require(not missing, path, f"{where}: no model config {missing} in {MODEL_CONFIG_DIR}")
        _require(len(set(v)) == len(v), path, f"{where} lists a model twice: {v}")
        return tuple(v)

    def step(v: Any, where: str) -> int:
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, path, f"{where} must be a step count >= 0, got {v!r}")
        return int(v)

    base = _per_scale(raw.get("base"), path, "efficiency.base", lambda v, w: _split(v, path, w), allow_shared=False)
    fams_raw = raw.get("families")
    _require(isinstance(fams_raw, dict) and len(fams_raw) >= 1, path, "efficiency.families must map family labels to {models, overrides}")
    families: dict[str, EfficiencyFamily] = {}
    for label, f in fams_raw.items():
        where = f"efficiency.families.{label}"
        _require(
            isinstance(label, str) and label.strip() != "",
            path,
            f"efficiency.families: a family label must be a non-empty string, got {label!r}",
        )
        _require(isinstance(f, dict), path, f"{where} must be a mapping with models (and overrides, equivariant)")
        unknown = set(f) - _FAMILY_KEYS
        _require(not unknown, path, f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_FAMILY_KEYS)})")
        _require("models" in f, path, f"{where}.models is missing")
        _require(isinstance(f.get("equivariant", False), bool), path, f"{where}.equivariant must be true or false")
        fam_overrides = _per_scale(f.get("overrides"), path, f"{where}.overrides", overrides)
        _require(
            not any(o.startswith("model=") for v in fam_overrides.values() for o in v),
            path,
            f"{where}.overrides must not choose the model ({where}.models does)",
        )
        own_fit = _per_scale(f["fit_from_step"], path, f"{where}.fit_from_step", step) if "fit_from_step" in f else None
        families[label] = EfficiencyFamily(
            label,
            _per_scale(f["models"], path, f"{where}.models", models),
            fam_overrides,
            bool(f.get("equivariant", False)),
            str(f.get("about", "")),
            own_fit,
        )
    reference = raw.get("reference", next(iter(families)))
    _require(reference in families, path, f"efficiency.reference must be one of the families {sorted(families)}, got {reference!r}")
    _require(not families[reference].equivariant, path, f"efficiency.reference {reference!r} must be a non-equivariant family")
    twirl_from, twirl_k = None, ()
    tw = raw.get("twirled")
    if tw is not None:
        _require(isinstance(tw, dict) and set(tw) <= {"from", "k"}, path, "efficiency.twirled must be a mapping with 'from' and 'k'")
        twirl_from = tw.get("from", reference)
        _require(
            twirl_from in families and not families[twirl_from].equivariant,
            path,
            f"efficiency.twirled.from must name a non-equivariant family of {sorted(families)}, got {twirl_from!r}",
        )
        ks = tw.get("k")
        _require(
            isinstance(ks, list) and ks and all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in ks),
            path,
            f"efficiency.twirled.k must be a non-empty list of rotation counts >= 2, got {ks!r}",
        )
        twirl_k = tuple(sorted(set(ks)))
    metric = raw.get("metric") or {}
    _require(
        isinstance(metric, dict) and set(metric) <= {"term", "suffix"},
        path,
        "efficiency.metric must be a mapping with 'term' and/or 'suffix'",
    )
    term = metric.get("term")
    _require(term is None or (isinstance(term, str) and term), path, f"efficiency.metric.term must name a loss term, got {term!r}")
    suffix = metric.get("suffix", "")
    _require(
        isinstance(suffix, str), path, f"efficiency.metric.suffix must be a string (an evaluation suffix, '' or '{MEAN_OVER_SUFFIXES}')"
    )
    fit_from = _per_scale(raw.get("fit_from_step", 0), path, "efficiency.fit_from_step", step)
    return EfficiencySpec(task, str(raw.get("about", "")), base, families, reference, twirl_from, twirl_k, term, suffix, fit_from)


def _load_card(path: Path) -> TaskCard:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    _require(isinstance(raw, dict), path, "a task card must be a mapping")
    unknown = set(raw) - _CARD_KEYS
    _require(not unknown, path, f"unknown keys {sorted(unknown)} (allowed: {sorted(_CARD_KEYS)})")
    task = raw.get("task")
    _require(isinstance(task, str) and task == path.stem, path, f"'task' must equal the file name {path.stem!r}, got {task!r}")
    sweeps_raw = raw.get("sweeps") or {}
    _require(isinstance(sweeps_raw, dict) and "default" in sweeps_raw, path, "'sweeps' must be a mapping with a 'default' sweep")
    sweeps = {}
    for name, s in sweeps_raw.items():
        _require(isinstance(s, dict), path, f"sweeps.{name} must be a mapping with about / smoke / paper")
        sweeps[name] = SweepSpec(
            task,
            str(name),
            str(s.get("about", "")),
            _split(s.get("smoke"), path, f"sweeps.{name}.smoke"),
            _split(s.get("paper"), path, f"sweeps.{name}.paper"),
        )
    defaults = raw.get("figure_defaults") or {}
    figs: dict[str, FigureSpec] = {}
    without = raw.get("without_figures") or []
    _require(
        isinstance(without, list) and all(w in STANDARD_FIGURES for w in without),
        path,
        f"'without_figures' must list standard figures ({sorted(STANDARD_FIGURES)}), got {without!r}",
    )
    for short, (draw, about) in STANDARD_FIGURES.items():
        if short in without:
            continue
        figs[f"{task}-{short}"] = FigureSpec(
            f"{task}-{short}",
            task,
            (sweeps["default"].key,),
            draw,
            about,
            paper_kwargs=dict(defaults.get("paper_kwargs") or {}),
            reproduce=True,
        )
    for short, f in (raw.get("figures") or {}).items():
        where = f"figures.{short}"
        _require(isinstance(f, dict), path, f"{where} must be a mapping")
        unknown = set(f) - _FIGURE_KEYS
        _require(not unknown, path, f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_FIGURE_KEYS)})")
        names = f.get("sweeps") or []
        _require(
            isinstance(names, list) and names and all(n in sweeps for n in names),
            path,
            f"{where}.sweeps must list sweeps of this card ({sorted(sweeps)}), got {names!r}",
        )
        _require(
            isinstance(f.get("draw"), str),
            path,
            f"{where}.draw must name a drawing function (equivrepro.plots.figures.<name> or <module>.<name>)",
        )
        full = f"{task}-{short}"
        _require(full not in figs, path, f"{where}: {full} is a standard figure; choose another name")
        figs[full] = FigureSpec(
            full,
            task,
            tuple(sweeps[n].key for n in names),
            f["draw"],
            str(f.get("about", "")),
            dict(f.get("kwargs") or {}),
            {**(defaults.get("paper_kwargs") or {}), **(f.get("paper_kwargs") or {})},
            bool(f.get("reproduce", False)),
        )
    data = []
    for i, d in enumerate(raw.get("embedded_data") or []):
        _require(
            isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("module"), str),
            path,
            f"embedded_data[{i}] needs 'path' and 'module'",
        )
        data.append(EmbeddedData(d["path"], d["module"], tuple(str(a) for a in d.get("args") or ())))
    experiments = dict(raw.get("experiments") or {})
    _require(set(experiments) == set(SCALES), path, f"'experiments' must name one experiment per scale {SCALES}, got {sorted(experiments)}")
    return TaskCard(
        task=task,
        title=str(raw.get("title", task)),
        order=int(raw.get("order", 100)),
        in_reproduce=bool(raw.get("in_reproduce", False)),
        experiments=experiments,
        embedded_data=tuple(data),
        dimensions=tuple(raw.get("dimensions") or ()),
        sweeps=sweeps,
        figures=figs,
        analysis=dict(raw.get("analysis") or {}),
        source=path,
        without_figures=tuple(without),
        efficiency=_load_efficiency(raw["efficiency"], task, path) if raw.get("efficiency") is not None else None,
    )


@lru_cache(maxsize=4)
def _cards(cards_dir: str) -> dict[str, TaskCard]:
    loaded = [_load_card(p) for p in sorted(Path(cards_dir).glob("*.yaml"))]
    return {c.task: c for c in sorted(loaded, key=lambda c: (c.order, c.task))}


def cards(cards_dir: str | Path | None = None) -> dict[str, TaskCard]:
    """Every task card, in display order."""
    return _cards(str(cards_dir or CARDS_DIR))


def card(task: str, cards_dir: str | Path | None = None) -> TaskCard:
    all_cards = cards(cards_dir)
    if task not in all_cards:
        raise KeyError(f"no task card for {task!r} in {cards_dir or CARDS_DIR}; tasks: {', '.join(all_cards) or 'none'}")
    return all_cards[task]


def sweeps(cards_dir: str | Path | None = None) -> dict[str, SweepSpec]:
    """Every sweep of every task, by ``<task>-<name>``."""
    return {s.key: s for c in cards(cards_dir).values() for s in c.sweeps.values()}


def figures(cards_dir: str | Path | None = None) -> dict[str, FigureSpec]:
    """Every figure: the cross-task headline, then each task's standard and declared figures."""
    all_cards = cards(cards_dir)
    out = {
        HEADLINE: FigureSpec(
            HEADLINE,
            None,
            tuple(c.default_sweep.key for c in all_cards.values() if c.in_reproduce),
            "headline",
            "pct vs training step, one panel per task (default runs)",
            reproduce=True,
            paper_kwargs={
                "smoothing": {
                    c.task: c.figures[f"{c.task}-pct"].paper_kwargs.get("smoothing") for c in all_cards.values() if c.in_reproduce
                }
            },
        )
    }
    for c in all_cards.values():
        out.update(c.figures)
    return out


def reproduce_figures(task: str | None = None, cards_dir: str | Path | None = None) -> list[str]:
    """The figures ``make reproduce`` draws (all in-reproduce tasks), or one task's (``make reproduce-<task>``)."""
    all_cards = cards(cards_dir)
    if task is not None:
        return [n for n, f in card(task, cards_dir).figures.items() if f.reproduce]
    names = [HEADLINE]
    for c in all_cards.values():
        if c.in_reproduce:
            names += [n for n, f in c.figures.items() if f.reproduce]
    return names


def drawing_function(draw: str):
    """The function a figure's ``draw`` names: ``name`` in :mod:`equivrepro.plots.figures`, or ``module.name`` in
    ``equivrepro.plots.<module>`` (e.g. ``spectrum.degree_shares``)."""
    import importlib

    module, _, name = draw.rpartition(".")
    mod = importlib.import_module(f"equivrepro.plots.{module or 'figures'}")
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise CatalogError(f"figure drawing function {draw!r} does not exist in {mod.__name__}")
    return fn


def build_embedded_data(data_dir: str | Path, cards_dir: str | Path | None = None) -> int:
    """Run the generator of every embedded data file that is missing under ``data_dir``; exit status."""
    for c in cards(cards_dir).values():
        for d in c.embedded_data:
            target = Path(data_dir) / d.path
            if target.exists():
                continue
            print(f"[data] {c.task}: building {target}", flush=True)
            rc = subprocess.run(d.command(data_dir)).returncode
            if rc != 0:
                print(f"[data] {c.task}: {' '.join(d.command(data_dir))} failed with exit status {rc}", file=sys.stderr)
                return rc
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m equivrepro.catalog", description="List what the task cards declare.")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("tasks", help="task names")
    f = sub.add_parser("figures", help="figure names")
    f.add_argument("--reproduce", action="store_true", help="only those `make reproduce` draws")
    f.add_argument("--task", default=None)
    d = sub.add_parser("data", help="build the missing embedded data files")
    d.add_argument("--data-dir", required=True, type=Path)
    args = p.parse_args(argv)
    if args.what == "tasks":
        print(" ".join(cards()))
    elif args.what == "figures":
        names = reproduce_figures(args.task) if args.reproduce else [n for n, fs in figures().items() if args.task in (None, fs.task)]
        print(" ".join(names))
    else:
        return build_embedded_data(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
