"""Cost of one twirl decomposition versus K plain forward passes of the same batch.

The decomposition with K rotations runs the model once on the B·K rotated copies (``repeat_batch``), then
rotates the predictions back and evaluates every loss term with its unbiased estimators. The baseline is
what any K-rotation estimate must at least pay: K forward calls of the model on the B-sample batch. Both run
under ``torch.no_grad``; each is warmed up and timed ``--repeats`` times, interleaved, and the median is reported, together
with one forward pass on the B·K batch alone and the same decomposition with a near-free ``nn.Linear(3, 3)`` model,
so the metric's own overhead (rotations, copies, loss terms, summaries) is visible separately from the batching
effect. Timings are interleaved across the four so that load changes on a shared machine affect all alike.

Default (CPU, 1 thread, well under a minute): a 4-layer pre-LN transformer, d = 128, 8 heads, over point clouds
of 30 points, B = 16, K = 10 (160 rows of 30 tokens), float32. Target: decomposition / baseline ≤ 1.15.

    python scripts/bench_decomposition.py [--device cuda] [--json OUT] [--threads N] [--k 10] [--batch 16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from equivrepro.atomic import atomic_write_json
from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import fixed_rotation_set
from equivrepro.testing.pointcloud import PointCloudTask, make_pointcloud_batch


class PointTransformer(nn.Module):
    """Non-equivariant transformer over point tokens: coordinates ``(B, N, 3)`` → per-point vectors ``(B, N, 3)``.

        h⁰_n = W_in x_n + b_in                                   (d)
        hˡ   = hˡ⁻¹ + MHA(LN(hˡ⁻¹));  hˡ = hˡ + FFN(LN(hˡ))      l = 1..L, FFN: d → 4d → d, GELU
        f(x)_n = W_out LN(hᴸ_n) + b_out                          (3)

    A stand-in of realistic shape (EScAIP / Proteina trunks are attention stacks of this width) for timing only.
    """

    def __init__(self, dim: int = 128, heads: int = 8, layers: int = 4):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.trunk = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.trunk(self.embed(pos))))


def _timed_interleaved(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, ``repeats`` times, interleaved (A B C A B C …) so that load drifts on a
    shared machine hit all of them alike; ``warmup`` untimed rounds first."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--k", type=int, default=10, help="rotations per sample")
    p.add_argument("--batch", type=int, default=16, help="samples per batch (B)")
    p.add_argument("--points", type=int, default=30, help="points per cloud")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=11, help="timed repetitions (median reported; ≥ 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (0 = leave torch's default)")
    p.add_argument("--chunk-size", type=int, default=None, help="rotations per forward pass in the decomposition")
    p.add_argument("--target", type=float, default=1.15, help="ratio the decomposition should stay under")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be at least 5")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    task = PointCloudTask()
    model = PointTransformer(args.dim, args.heads, args.layers).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    batch = {
        k: v.to(device)
        for k, v in make_pointcloud_batch(args.batch, args.points, torch.Generator().manual_seed(1), dtype=torch.float32).items()
    }
    rotations = fixed_rotation_set(args.k, seed=2, device=device)
    big_batch = {k: v.repeat_interleave(args.k, 0) for k, v in batch.items()}

    def baseline():
        with torch.no_grad():
            for _ in range(args.k):
                task.predict(model, batch)

    def one_big_pass():
        with torch.no_grad():
            task.predict(model, big_batch)

    def decomposition():
        with torch.no_grad():
            out = twirl_decomposition(model, task, batch, rotations, chunk_size=args.chunk_size)
            for d in out.values():
                d.summary()  # the scalars a harness logs, so .item() syncs are included

    cheap = nn.Linear(3, 3).to(device).eval()

    def arithmetic_only():
        # the same decomposition with a near-free model: rotations, copies, loss terms and summaries alone
        with torch.no_grad():
            for d in twirl_decomposition(cheap, task, batch, rotations, chunk_size=args.chunk_size).values():
                d.summary()

    fns = {"baseline": baseline, "big_pass": one_big_pass, "decomposition": decomposition, "arithmetic": arithmetic_only}
    times = _timed_interleaved(fns, device, args.warmup, args.repeats)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["decomposition"] / med["baseline"]
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "model": f"PointTransformer(dim={args.dim}, heads={args.heads}, layers={args.layers})",
        "params": n_params,
        "batch": args.batch,
        "points": args.points,
        "k": args.k,
        "rows": args.batch * args.k,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "baseline_s": med["baseline"],
        "big_pass_s": med["big_pass"],
        "decomposition_s": med["decomposition"],
        "metric_overhead_s": med["decomposition"] - med["big_pass"],
        "arithmetic_only_s": med["arithmetic"],
        "ratio": ratio,
        "ratio_of_minima": min(times["decomposition"]) / min(times["baseline"]),
        "target": args.target,
        "within_target": ratio <= args.target,
        "all_times_s": times,
    }
    print(f"device {result['device']}  torch {result['torch']}  threads {result['threads']}")
    print(
        f"model {result['model']}  {n_params / 1e6:.2f}M params;  B={args.batch}  N={args.points}  K={args.k}  ({args.batch * args.k} rows)"
    )
    print(f"baseline: {args.k} forward passes on B={args.batch}       median {med['baseline'] * 1e3:9.2f} ms")
    print(f"one forward pass on B*K={args.batch * args.k}              median {med['big_pass'] * 1e3:9.2f} ms")
    print(
        f"twirl decomposition (K={args.k}, all terms + summary)   median {med['decomposition'] * 1e3:9.2f} ms"
        f"   (metric overhead {result['metric_overhead_s'] * 1e3:.2f} ms)"
    )
    print(
        f"decomposition arithmetic alone (trivial model)   median {med['arithmetic'] * 1e3:9.2f} ms"
        f"   ({med['arithmetic'] / med['baseline'] * 100:.1f} % of the baseline)"
    )
    print(
        f"ratio decomposition / baseline = {ratio:.3f} (medians; {result['ratio_of_minima']:.3f} for the minima)"
        f"   target ≤ {args.target}: {'OK' if result['within_target'] else 'ABOVE TARGET'}"
    )
    if args.json is not None:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
