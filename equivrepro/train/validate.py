"""Check the harness's own config values where they are composed, before any data or model is touched.

Every violation names the config key, the allowed range and the value given, e.g.
``trainer.batch_size must be an integer ≥ 1, got 0``. Task, model and data settings are checked by the
objects they build (they know their own ranges); this module owns ``trainer.*`` and ``equivariance.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from equivrepro.errors import ConfigError

__all__ = ["ConfigError", "validate_config", "PRECISIONS"]

PRECISIONS = ("32", "bf16", "16")


def _int(lo: int | None = None, nullable: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if nullable else f"an integer{f' ≥ {lo}' if lo is not None else ''}"
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            return f"an integer{f' ≥ {lo}' if lo is not None else ''}{' or null' if nullable else ''}"
        return None

    return check


def _float(
    lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False, nullable: bool = False
) -> Callable[[Any], str | None]:
    def describe() -> str:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if open_lo else '≥'} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if open_hi else '≤'} {hi:g}")
        return "a number" + (f" {' and '.join(parts)}" if parts else "") + (" or null" if nullable else "")

    def check(v: Any) -> str | None:
        if v is None:
            return None if nullable else describe()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return describe()
        v = float(v)
        if lo is not None and (v < lo or (open_lo and v == lo)):
            return describe()
        if hi is not None and (v > hi or (open_hi and v == hi)):
            return describe()
        return None

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if str(v) in options else f"one of {list(options)}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _str_list_or_null(v: Any) -> str | None:
    if v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v)):
        return None
    return "a list of evaluation suffixes or null"


_RULES: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "trainer": {
        "max_steps": _int(1),
        "batch_size": _int(1),
        "grad_clip": _float(0, open_lo=True, nullable=True),
        "ema_decay": _float(0, 1, open_lo=True, open_hi=True, nullable=True),
        "augment": _bool,
        "precision": _choice(PRECISIONS),
        "num_workers": _int(0),
        "log_every": _int(1),
        "checkpoint_every": _int(1),
        "progress_bar": _bool,
        "deterministic": _bool,
        "interrupt_after_step": _int(1, nullable=True),
        "profile_compute": _bool,
    },
    "equivariance": {
        "every": _int(0),
        "log_points": _int(0),
        "num_samples": _int(1),
        "k": _int(2),
        "chunk_size": _int(1, nullable=True),
        "batch_size": _int(1),
        "seed": _int(0),
        "grad_norms": _bool,
        "floor": _bool,
        "cube_group": lambda v: None if v in (True, False, "final") else "true, false or 'final'",
        "grad_samples": _int(1, nullable=True),
        "angle_rotations": _int(0),
        "spectrum_l_max": _int(1, nullable=True),
        "bootstrap": _int(0),
        "baseline_samples": _int(0),
        "grad_suffixes": _str_list_or_null,
        "angle_suffixes": _str_list_or_null,
    },
}


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every out-of-range ``trainer.*`` / ``equivariance.*`` value of ``cfg``."""
    problems = []
    for section, rules in _RULES.items():
        node = cfg.get(section) if hasattr(cfg, "get") else None
        if node is None:
            continue
        for key, rule in rules.items():
            if key not in node:
                continue
            msg = rule(node[key])
            if msg:
                problems.append(f"{section}.{key} must be {msg}, got {node[key]!r}")
    eq = cfg.get("equivariance") if hasattr(cfg, "get") else None
    if eq is not None and eq.get("spectrum_l_max") is not None and isinstance(eq.get("k"), int) and eq["k"] < 3:
        problems.append(f"equivariance.k must be ≥ 3 when equivariance.spectrum_l_max is set (leave-two-out centring), got {eq['k']}")
    snaps = cfg.get("trainer", {}).get("snapshot_steps") if hasattr(cfg, "get") else None
    if snaps is not None and (
        not isinstance(snaps, (list, tuple)) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in snaps)
    ):
        problems.append(f"trainer.snapshot_steps must be a list of integers ≥ 1, got {snaps!r}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
