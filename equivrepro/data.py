"""What every task's data module shares: the data-module contract, seeded splits, nested subsets, padding.

A data module (one per task, in ``tasks/<task>/data/``) is built by Hydra from ``configs/data/*.yaml``
and exposes

* ``setup()`` — read / index / cache the data (idempotent; raises :class:`DataError` naming the file and
  record on bad input),
* ``train_dataset`` and ``heldout_dataset`` — map-style datasets whose items are ``dict[str, Tensor]``,
* ``collate(items) -> Batch`` — a padded batch (sample dimension first, boolean ``mask`` for padding),
* ``describe() -> dict`` — counts worth logging (sizes, skipped records by reason, units),
* ``statistics() -> dict`` — training-split statistics a task binds to (normalisers).

Constructors validate their own arguments before touching a file and raise :class:`DataConfigError`
naming the config key (``data.<key>``); :func:`check_size` / :func:`check_choice` / :func:`check_number`
are the shared checks. Readers of atomic coordinates check physical plausibility with
:func:`shortest_distances` against :data:`MIN_INTERATOMIC_DISTANCE`, and open HDF5 files through
:func:`open_hdf5` (a :class:`DataError` naming the file instead of h5py's bare ``OSError``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.errors import ConfigError, DataError
from equivrepro.task import Batch

__all__ = [
    "hdf5_string",
    "ProcessLocalFile",
    "DataError",
    "DataConfigError",
    "DataModule",
    "nested_subset",
    "heldout_split",
    "pad_collate",
    "SubsetDataset",
    "EmbeddedFile",
    "ensure_data_file",
    "check_size",
    "check_choice",
    "check_number",
    "MIN_INTERATOMIC_DISTANCE",
    "shortest_distances",
    "open_hdf5",
]

log = logging.getLogger("equivrepro.data")


class ProcessLocalFile:
    """A file opened lazily, once per process, by ``opener()`` (e.g. ``partial(h5py.File, path, "r")``).

    DataLoader workers (forked or spawned) must not share an h5py or plain file handle with the main
    process: :meth:`get` reopens the file when it is called from a new process, and pickling drops the
    handle. ``opener`` must be picklable (a ``functools.partial`` of an importable callable is).
    """

    def __init__(self, opener: Callable[[], Any]):
        self.opener = opener
        self._handle: Any = None
        self._pid: int | None = None

    def get(self) -> Any:
        pid = os.getpid()
        if self._handle is None or self._pid != pid:
            self._handle = self.opener()
            self._pid = pid
        return self._handle

    def __getstate__(self) -> dict:
        return {"opener": self.opener, "_handle": None, "_pid": None}


class DataConfigError(ConfigError):
    """A data-module setting of the wrong type or out of range; the message names the key (``data.<key>``)."""


def check_choice(value: Any, key: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else :class:`DataConfigError` naming ``key``."""
    if value not in tuple(choices):
        raise DataConfigError(f"{key} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_number(
    value: Any, key: str, minimum: float | None = None, *, integer: bool = False, allow_none: bool = False, strict: bool = False
) -> Any:
    """``value`` as an int (``integer``) or float ``≥ minimum`` (``> minimum`` if ``strict``), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    kind = "an int" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = value.is_integer()
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '≥'} {minimum:g}"
        raise DataConfigError(f"{key} must be {kind}{bound}{' or null' if allow_none else ''}, got {value!r}")
    return int(value) if integer else float(value)


def check_size(value: Any, key: str, *, allow_none: bool = False, allow_whole: bool = False) -> int | float | None:
    """A count (int ≥ 1; an integral float such as ``5e4`` counts too) or a fraction in (0, 1) — (0, 1] with
    ``allow_whole`` — or ``None`` if allowed; else :class:`DataConfigError` naming ``key``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ok = False
    elif isinstance(value, int) or value > 1:
        ok = value >= 1 and float(value).is_integer()
        value = int(value) if ok else value
    else:
        ok = 0 < value < 1 or (allow_whole and value == 1)
    if not ok:
        frac = "(0, 1]" if allow_whole else "(0, 1)"
        raise DataConfigError(f"{key} must be an int ≥ 1 or a fraction in {frac}{' or null' if allow_none else ''}, got {value!r}")
    return value


class EmbeddedFile(Protocol):
    """The embedded data file of a task and how to make it (``configs/data/*_embedded.yaml``: ``generate``)."""

    path: str

    def __call__(self) -> dict:  # writes ``path``; returns a summary with ``seconds``
        ...


def ensure_data_file(path: str, embedded: EmbeddedFile | None, key: str = "data.path", hint: str = "") -> None:
    """Make sure ``path`` exists: generate it when it is the embedded file's own default location, else fail.

    A mistyped ``data.path`` therefore never starts generating data at the typo: only ``embedded.path``
    (``${paths.data_dir}/<embedded file>``) is ever generated. A missing file is a :class:`DataError`
    naming ``key`` and the path, with ``hint`` (how to make or get the data).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{key}={path} is a directory, not a data file")
    if p.exists():
        return
    if embedded is not None and Path(embedded.path).expanduser().resolve() == p.resolve():
        log.warning("%s does not exist: generating the embedded data there (as `make data` does)", path)
        summary = embedded()
        log.warning("generated %s in %.0f s", path, float(summary.get("seconds", 0.0)) if isinstance(summary, Mapping) else 0.0)
        return
    if embedded is not None:
        raise DataError(
            f"{key}={path}: no such file. Only the embedded data's own location {embedded.path} is generated on "
            "first use (`make data` makes it); point the setting at an existing file, or drop the override to use "
            "the embedded data."
        )
    raise DataError(f"{key}={path}: no such file. {hint}".strip())


#: Shortest distance (Å) between two atoms of a real molecule that a reader accepts. Covalent bonds to H
#: are ≥ 0.74 Å (H–H in H₂); Å coordinates read as bohr (× 0.529) put typical C–H/O–H bonds at 0.51–0.58 Å.
MIN_INTERATOMIC_DISTANCE = 0.6


def shortest_distances(coords: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """``(M,)`` shortest interatomic distance of each conformer of ``coords (M, N, 3)`` (or ``(N, 3)`` → ``(1,)``);
    ``inf`` when ``N < 2``. Units are those of ``coords``. Works in chunks of ``chunk`` atom pairs."""
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    m, n = x.shape[0], x.shape[1]
    out = np.full(m, np.inf)
    if n < 2:
        return out
    step = max(1, chunk // (n * n))
    for a in range(0, m, step):
        d2 = ((x[a : a + step, :, None, :] - x[a : a + step, None, :, :]) ** 2).sum(-1)
        np.einsum("kii->ki", d2)[...] = np.inf  # an atom's distance to itself does not count
        out[a : a + step] = np.sqrt(d2.min(axis=(1, 2)))
    return out


def hdf5_string(value) -> str:
    """An HDF5 string attribute or dataset value as ``str``: bytes are decoded, arrays give their first element."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode()
    if isinstance(value, np.ndarray):
        return hdf5_string(value.reshape(-1)[0]) if value.size else ""
    return str(value)


def open_hdf5(path: str | os.PathLike, mode: str = "r"):
    """``h5py.File(path, mode)``, or a :class:`DataError` naming the file when it is missing, empty, not HDF5
    or truncated (h5py itself raises a bare ``OSError``)."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p} is a directory, not an HDF5 file")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{p}: the file is empty (0 bytes), not an HDF5 file")
    if not h5py.is_hdf5(str(p)):
        with open(p, "rb") as fh:
            head = fh.read(16)
        raise DataError(f"{p}: not an HDF5 file (it starts with {head!r}; HDF5 files start with b'\\x89HDF\\r\\n\\x1a\\n')")
    try:
        return h5py.File(str(p), mode)
    except OSError as exc:
        raise DataError(f"{p}: cannot be read as HDF5 ({size} bytes; the file looks truncated or corrupt: {exc})") from None


class DataModule:
    """Base class of the task data modules (see module docstring)."""

    train_dataset: Dataset
    heldout_dataset: Dataset

    def setup(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"train_size": len(self.train_dataset), "heldout_size": len(self.heldout_dataset)}

    def statistics(self) -> dict[str, float]:
        """Statistics of the training split that a task binds settings to (:meth:`equivrepro.task.Task.bind_data`),
        e.g. force-field normalisers; computed from the data actually used, after :meth:`setup`. Default: none."""
        return {}


class SubsetDataset(Dataset):
    """A view of ``base`` restricted to ``indices`` (a 1-D LongTensor)."""

    def __init__(self, base: Dataset, indices: torch.Tensor):
        self.base = base
        self.indices = indices.long()

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def heldout_split(
    n: int, heldout: int | float, seed: int, setting: str | None = None, unit: str = "records"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of ``range(n)`` into (train pool, held-out) indices.

    ``heldout`` is a count (int ≥ 1) or a fraction in (0, 1). The held-out set depends only on ``n`` and
    ``seed``, never on the training-subset size, so runs of every data size are evaluated on the same
    molecules. ``setting`` (e.g. ``"data.heldout_size"``) and ``unit`` (what is counted) go into the error.
    """
    n_held = int(round(heldout * n)) if isinstance(heldout, float) and heldout < 1 else int(heldout)
    if not 0 < n_held < n:
        change = f": change {setting} (now {heldout!r})" if setting else ""
        if n < 2:
            raise DataConfigError(f"held-out size {n_held}: cannot hold out from {n} {unit} (at least 2 are needed){change}")
        raise DataConfigError(f"held-out size {n_held} must be between 1 and {n - 1} (dataset has {n} {unit}){change}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def nested_subset(pool: torch.Tensor, size: int | float | None, seed: int, setting: str | None = None) -> torch.Tensor:
    """The first ``size`` elements of a seeded permutation of ``pool`` (a count or a fraction of it).

    Subsets for the same seed are nested: the 500-record subset is inside the 5k one, which is inside
    the 50k one, and so on. ``None`` keeps the whole pool. ``setting`` names the config key in the error.
    """
    n = int(pool.numel())
    if size is None:
        return pool
    k = int(round(size * n)) if isinstance(size, float) and size <= 1 else int(size)
    if not 1 <= k <= n:
        what = f"{setting}={size!r}" if setting else f"training subset size {size}"
        raise DataConfigError(f"{what} is not within 1..{n} (records available)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return pool[perm[:k]].sort().values


def pad_collate(items: Sequence[Mapping[str, torch.Tensor]], ragged: Iterable[str], length_key: str | None = None) -> Batch:
    """Stack item dicts into a batch, padding the ``ragged`` keys along their first dimension with zeros.

    Adds ``mask (B, N_max)`` (True on real rows), taken from the first ragged key (or ``length_key``).
    Non-ragged tensors must have equal shapes and are stacked.
    """
    ragged = list(ragged)
    out: Batch = {}
    lengths = torch.tensor([int(it[length_key or ragged[0]].shape[0]) for it in items])
    n_max = int(lengths.max()) if len(items) else 0
    for key in items[0].keys():
        vals = [it[key] for it in items]
        if key in ragged:
            # each ragged key is padded to its own longest entry (it need not share length_key's length)
            shape = (len(vals), max(int(v.shape[0]) for v in vals)) + tuple(vals[0].shape[1:])
            padded = vals[0].new_zeros(shape)
            for i, v in enumerate(vals):
                padded[i, : v.shape[0]] = v
            out[key] = padded
        else:
            out[key] = torch.stack([torch.as_tensor(v) for v in vals])
    out["mask"] = torch.arange(n_max)[None, :] < lengths[:, None]
    return out
