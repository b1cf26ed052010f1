"""Per-task fixtures of the task contract (tests/test_task_contract.py) and the experiment check
(tests/test_experiments.py): one module per task config, ``tests/contracts/<task>.py``, defining ``CONTRACT``.

A new task adds its module here (its tests) and nothing else: the contract tests discover the modules by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Contract", "load_contract"]


@dataclass(frozen=True)
class Contract:
    """What the shared contract tests need to know about one task.

    Attributes:
        task: the ``configs/task/<task>.yaml`` name.
        package: module prefix every ``_target_`` of the task, its default model and data lives under.
        write_data: ``tmp_path -> overrides`` writing a tiny data set in the format of the task's default data config
            (and of its smoke experiment) and pointing the config at it.
        write_paper_data: the same for the ``<task>_paper`` experiment's data config (its real input format), or None.
        shrink: overrides that shrink only sizes (batch, length, grid, held-out set), never the code path.
        paper_shrink: ``shrink`` for the paper experiment (may add sizes, e.g. the grid).
        equivariant_pct: bound on pct of an exactly equivariant predictor through the Haar rotate/unrotate path (float64).
        exact_group: "haar" when the group action is exact for every rotation, "cube" when only the 24 cube rotations are
            exact (resampled grids), with ``roundtrip_tol`` the relative error of the Haar round trip and ``haar_pct`` the
            bound on an exactly equivariant predictor's pct under Haar rotations (the instrument's floor).
    """

    task: str
    package: str
    write_data: Callable[[Path], list[str]]
    write_paper_data: Callable[[Path], list[str]] | None = None
    shrink: list[str] = field(default_factory=list)
    paper_shrink: list[str] = field(default_factory=list)
    equivariant_pct: float = 1e-10
    exact_group: str = "haar"
    roundtrip_tol: float = 1e-10
    haar_pct: float = 1e-10


def load_contract(task: str) -> Contract | None:
    """``tests.contracts.<task>.CONTRACT``, or None when the task has no contract module."""
    if not (Path(__file__).parent / f"{task}.py").exists():
        return None
    return importlib.import_module(f"tests.contracts.{task}").CONTRACT
