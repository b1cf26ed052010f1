#!/usr/bin/env python
"""Collect the tidy results table (one row per run, step and metric) from local runs or a wandb project.

    python scripts/collect_results.py --runs-dir runs/smoke --out results/smoke
    python scripts/collect_results.py --runs-dir /shared/runs --metrics 'equiv/*' 'train/loss' --out results/paper
    python scripts/collect_results.py --wandb my-entity/equivrepro --filter '{"config.task.name": "forcefield"}' --out results/paper

Writes ``<out>/results.parquet`` (pyarrow installed) or ``<out>/results.csv``, plus ``<out>/pct_summary.csv``
(per run and pct metric: the first evaluation, the minimum — the early "dip" — with its step, and the final
value; fractions, not percent). Load the table in Python with ``equivrepro.results.read_table(path)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from equivrepro.results import collect_local, collect_wandb, summarize_pct, write_table  # noqa: E402
from equivrepro.train.checkpoint import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs-dir", type=Path, help="directory searched recursively for <run>/metrics.csv")
    src.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs and histories with wandb.Api() (needs network and a login)")
    p.add_argument("--filter", default=None, help="wandb run filter as JSON (MongoDB syntax), e.g. '{\"state\": \"finished\"}'")
    p.add_argument("--metrics", nargs="*", default=None, help="glob patterns of metrics to keep (default: all)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=["auto", "parquet", "csv"], default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[collect] %(message)s")
    logging.getLogger("equivrepro").setLevel(logging.INFO)
    if args.wandb:
        table = collect_wandb(args.wandb, filters=json.loads(args.filter) if args.filter else None, metrics=args.metrics)
    else:
        if args.filter:
            p.error("--filter applies to --wandb only")
        table = collect_local(args.runs_dir, metrics=args.metrics)
    path = write_table(table, args.out, fmt=args.format)
    atomic_write_text(args.out / "pct_summary.csv", summarize_pct(table).to_csv(index=False))
    skipped = table.attrs.get("skipped", [])
    print(f"{path}: {len(table)} rows from {table['run_id'].nunique()} runs"
          + (f"; {len(skipped)} directories skipped (see warnings)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
