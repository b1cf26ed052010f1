"""Benchmark (not a test): the force-field readers streaming a large file through a DataLoader with workers.

For each file size (default 100k and 500k conformers) it writes a SPICE-layout HDF5 file (a few thousand
groups of small molecules × many conformers; synthetic coordinates that pass the readers' plausibility
check) and a comparable extended-XYZ file into a temporary directory, then, in a fresh process per
(format, size) so that peak memory is that run's own:

1. builds :class:`tasks.forcefield.data.ForceFieldDataModule` (``format=auto``) — the one indexing walk of
   the file (timed, cached next to it);
2. iterates one shuffled epoch of the training split through a ``DataLoader`` (``--workers`` worker
   processes, ``--batch-size``), counting records;
3. reports records per second and peak RSS of the main process and of the workers (sampled with psutil
   when it is installed, plus ``getrusage`` ``RUSAGE_SELF`` / ``RUSAGE_CHILDREN`` after the workers exit),
   and the peak of their sum (an over-count: forked workers share pages with the main process).

Target: peak RSS under 2 GB and independent of the file size. Files are removed at the end (``--keep DIR``
writes them there and keeps them).

    .venv/bin/python -m tasks.forcefield.bench_readers [--sizes 100000 500000] [--workers 2] [--batch-size 64]

`make bench` runs every ``tasks/<task>/bench_*.py`` this way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
#: a small molecule (C2H6O composition): the atoms of every group are spread over a jittered lattice
Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
SYMBOLS = {1: "H", 6: "C", 8: "O"}


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def _geometry(rng: np.random.Generator, m: int) -> np.ndarray:
    """``(m, n, 3)`` Å: one random lattice geometry (sites ≥ 1.2 Å apart) plus ≤ 0.05 Å per-conformer noise."""
    sites = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    base = sites[rng.choice(len(sites), size=len(Z), replace=False)] * 1.5 + rng.uniform(-0.1, 0.1, (len(Z), 3))
    return base[None] + np.clip(rng.normal(0, 0.02, (m, len(Z), 3)), -0.05, 0.05)


def write_spice(path: Path, n_conformers: int, per_group: int = 200, seed: int = 0) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for g in range(n_conformers // per_group):
            grp = f.create_group(f"mol{g:06d}")
            grp.create_dataset("atomic_numbers", data=Z.astype(np.int16))
            grp.create_dataset("conformations", data=(_geometry(rng, per_group) * BOHR_PER_ANGSTROM).astype(np.float32))
            grp.create_dataset("dft_total_energy", data=-154.9 + rng.normal(0, 0.01, per_group))
            grp.create_dataset("dft_total_gradient", data=rng.normal(0, 0.02, (per_group, len(Z), 3)).astype(np.float32))


def write_extxyz(path: Path, n_conformers: int, per_group: int = 200, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    header = f'{len(Z)}\nProperties=species:S:1:pos:R:3:forces:R:3 energy=%.8f pbc="F F F"\n'
    frame = header + "%s %.6f %.6f %.6f %.6f %.6f %.6f\n" * len(Z)
    with open(path, "w", buffering=1 << 22) as fh:
        for _ in range(n_conformers // per_group):
            x = _geometry(rng, per_group)
            forces = rng.normal(0, 1.0, x.shape)
            energy = -4215.0 + rng.normal(0, 0.3, per_group)
            for c in range(per_group):
                values = [energy[c]]
                for a in range(len(Z)):
                    values += [SYMBOLS[int(Z[a])], *x[c, a], *forces[c, a]]
                fh.write(frame % tuple(values))


# --------------------------------------------------------------------------------------------------
# One run (in its own process)
# --------------------------------------------------------------------------------------------------
class _Sampler(threading.Thread):
    """Samples RSS of this process and its children every ``period`` s (psutil), keeping the peaks."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.peak = {"main": 0, "worker": 0, "total": 0}
        try:
            import psutil
        except ImportError:
            self.proc = None
        else:
            self.proc = psutil.Process()

    def run(self) -> None:
        if self.proc is None:
            return
        while not self.stop.is_set():
            try:
                main = self.proc.memory_info().rss
                workers = [c.memory_info().rss for c in self.proc.children(recursive=True)]
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                continue
            self.peak["main"] = max(self.peak["main"], main)
            self.peak["worker"] = max([self.peak["worker"], *workers])
            self.peak["total"] = max(self.peak["total"], main + sum(workers))
            self.stop.wait(self.period)


def run_one(path: str, workers: int, batch_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from tasks.forcefield.data import ForceFieldDataModule

    torch.set_num_threads(1)
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    dm = ForceFieldDataModule(path, format="auto", heldout_size=0.01, split_by="conformer", element_references="none")
    dm.setup()
    index_s = time.perf_counter() - t0
    loader = DataLoader(
        dm.train_dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=dm.collate,
        generator=torch.Generator().manual_seed(0),
    )
    records = 0
    t0 = time.perf_counter()
    for batch in loader:
        records += int(batch["energy"].shape[0])
    epoch_s = time.perf_counter() - t0
    del loader
    sampler.stop.set()
    sampler.join()
    mb = 1 / 2**20
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "format": dm.resolved_format,
        "conformers": len(dm.base),
        "file_mb": round(os.path.getsize(path) * mb, 1),
        "records": records,
        "index_s": round(index_s, 1),
        "epoch_s": round(epoch_s, 1),
        "records_per_s": round(records / epoch_s),
        "rss_main_mb": round(max(sampler.peak["main"] * mb, ru_self)),
        "rss_worker_mb": round(max(sampler.peak["worker"] * mb, ru_children)),
        "rss_sum_mb": round(sampler.peak["total"] * mb),
        "statistics": dm.statistics(),
    }


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000], help="conformers per file")
    p.add_argument("--formats", nargs="+", default=["spice_hdf5", "extxyz"], choices=["spice_hdf5", "extxyz"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep", default=None, help="write the files into this directory and keep them")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one benchmark on this file
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.workers, args.batch_size)))
        return []
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_readers_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            for fmt in args.formats:
                path = workdir / (f"spice_{size}.h5" if fmt == "spice_hdf5" else f"maceoff_{size}.xyz")
                if not path.exists():
                    t0 = time.perf_counter()
                    (write_spice if fmt == "spice_hdf5" else write_extxyz)(path, size)
                    print(f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
                cmd = [
                    sys.executable,
                    "-m",
                    __spec__.name,
                    "--child",
                    str(path),
                    "--workers",
                    str(args.workers),
                    "--batch-size",
                    str(args.batch_size),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if out.returncode:
                    raise RuntimeError(f"benchmark of {path} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    header = (
        f"{'format':<11} {'conformers':>10} {'file MiB':>8} {'index s':>7} {'epoch s':>7} {'records/s':>9} "
        f"{'RSS main':>8} {'RSS worker':>10} {'RSS sum':>7}  (MiB; {args.workers} workers, batch {args.batch_size})"
    )
    print("\n" + header)
    for r in rows:
        print(
            f"{r['format']:<11} {r['conformers']:>10} {r['file_mb']:>8} {r['index_s']:>7} {r['epoch_s']:>7} {r['records_per_s']:>9} "
            f"{r['rss_main_mb']:>8} {r['rss_worker_mb']:>10} {r['rss_sum_mb']:>7}"
        )
    return rows


if __name__ == "__main__":
    main()
