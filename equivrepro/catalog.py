"""The catalog of tasks: what each task declares for reproduction, read from ``configs/reproduce/<task>.yaml``.

A task card names the task's experiments (smoke / paper), its embedded data generators, its sweeps
(Hydra multirun overrides per scale), its figures, its analysis defaults and the table columns its sweeps
vary. Shared code, the scripts and the Makefile discover tasks from the cards only, so adding a task means
adding its folder, its configs (including its card) and its tests — nothing here changes.

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

__all__ = [
    "CARDS_DIR", "SCALES", "STANDARD_FIGURES", "HEADLINE", "SweepSpec", "FigureSpec", "EmbeddedData", "TaskCard",
    "cards", "card", "sweeps", "figures", "reproduce_figures", "drawing_function", "CatalogError",
]

CARDS_DIR = Path(__file__).resolve().parents[1] / "configs" / "reproduce"
SCALES = ("smoke", "paper")
HEADLINE = "headline"

#: figures every task has, on its ``default`` sweep: name → (drawing function, description)
STANDARD_FIGURES: dict[str, tuple[str, str]] = {
    "pct": ("pct_curves", "pct vs training step (one curve per evaluation suffix)"),
    "losses": ("loss_decomposition", "L_total / L_mean / L_equiv with the trivial predictor's and the baseline's loss"),
}

_CARD_KEYS = {"task", "title", "order", "in_reproduce", "experiments", "embedded_data", "dimensions", "sweeps", "figures",
              "analysis", "figure_defaults"}
_FIGURE_KEYS = {"sweeps", "draw", "about", "kwargs", "paper_kwargs", "reproduce"}


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

    @property
    def default_sweep(self) -> SweepSpec:
        return self.sweeps["default"]


def _require(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise CatalogError(f"{path}: {msg}")


def _split(text: Any, path: Path, where: str) -> tuple[str, ...]:
    _require(isinstance(text, str) and text.strip() != "", path, f"{where} must be a non-empty string of Hydra overrides")
    return tuple(text.split())


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
        sweeps[name] = SweepSpec(task, str(name), str(s.get("about", "")), _split(s.get("smoke"), path, f"sweeps.{name}.smoke"),
                                 _split(s.get("paper"), path, f"sweeps.{name}.paper"))
    defaults = raw.get("figure_defaults") or {}
    figs: dict[str, FigureSpec] = {}
    for short, (draw, about) in STANDARD_FIGURES.items():
        figs[f"{task}-{short}"] = FigureSpec(f"{task}-{short}", task, (sweeps["default"].key,), draw, about,
                                             paper_kwargs=dict(defaults.get("paper_kwargs") or {}), reproduce=True)
    for short, f in (raw.get("figures") or {}).items():
        where = f"figures.{short}"
        _require(isinstance(f, dict), path, f"{where} must be a mapping")
        unknown = set(f) - _FIGURE_KEYS
        _require(not unknown, path, f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_FIGURE_KEYS)})")
        names = f.get("sweeps") or []
        _require(isinstance(names, list) and names and all(n in sweeps for n in names), path,
                 f"{where}.sweeps must list sweeps of this card ({sorted(sweeps)}), got {names!r}")
        _require(isinstance(f.get("draw"), str), path, f"{where}.draw must name a drawing function (equivrepro.plots.figures.<name> or <module>.<name>)")
        full = f"{task}-{short}"
        _require(full not in figs, path, f"{where}: {full} is a standard figure; choose another name")
        figs[full] = FigureSpec(full, task, tuple(sweeps[n].key for n in names), f["draw"], str(f.get("about", "")),
                                dict(f.get("kwargs") or {}), {**(defaults.get("paper_kwargs") or {}), **(f.get("paper_kwargs") or {})},
                                bool(f.get("reproduce", False)))
    data = []
    for i, d in enumerate(raw.get("embedded_data") or []):
        _require(isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("module"), str), path,
                 f"embedded_data[{i}] needs 'path' and 'module'")
        data.append(EmbeddedData(d["path"], d["module"], tuple(str(a) for a in d.get("args") or ())))
    experiments = dict(raw.get("experiments") or {})
    _require(set(experiments) == set(SCALES), path, f"'experiments' must name one experiment per scale {SCALES}, got {sorted(experiments)}")
    return TaskCard(
        task=task, title=str(raw.get("title", task)), order=int(raw.get("order", 100)), in_reproduce=bool(raw.get("in_reproduce", False)),
        experiments=experiments, embedded_data=tuple(data), dimensions=tuple(raw.get("dimensions") or ()), sweeps=sweeps,
        figures=figs, analysis=dict(raw.get("analysis") or {}), source=path,
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
    out = {HEADLINE: FigureSpec(HEADLINE, None, tuple(c.default_sweep.key for c in all_cards.values() if c.in_reproduce),
                                "headline", "pct vs training step, one panel per task (default runs)", reproduce=True,
                                paper_kwargs={"smoothing": {c.task: c.figures[f"{c.task}-pct"].paper_kwargs.get("smoothing")
                                                            for c in all_cards.values() if c.in_reproduce}})}
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
