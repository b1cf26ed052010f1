"""Compute accounting of a (task, model, batch): parameters, FLOPs per training step and per inference, and
measured seconds on the machine at hand — the axes on which any two runs can be compared.

**What is counted.** :class:`torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of matrix products
and convolutions (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution`` and their backward, and the
fused attention kernels of CUDA: flash / memory-efficient / cuDNN SDPA), 2 per multiply–add: the
convention of scaling-law work (C ≈ 6·N·D for a transformer). Everything else counts 0: element-wise ops
(activations, norms, gates, residual adds, optimiser updates), reductions, and gathers / scatters
(``index_add_``, ``scatter_add``, ``gather``, ``index_select``: message passing without a matmul).
Two gaps matter here and are handled:

* **CPU fused attention** (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, what
  ``F.scaled_dot_product_attention`` runs on CPU) has no formula in torch and would count 0: it is counted
  with torch's own SDPA formulas (:data:`CUSTOM_FLOP_FORMULAS`; forward 2 matmuls, backward 5 with the
  recomputed scores, as torch counts the CUDA kernels).
* **The uncounted rest** is reported by timing instead: one extra step runs under a dispatch mode that times
  every op, and ``uncounted_share`` is the share of op time spent in ops without a FLOP formula (with the
  slowest such ops named). A large share (e3nn tensor-product models spend much of their time in
  element-wise products and index ops) means FLOPs understate their cost, and seconds are the fairer axis.

e3nn tensor products are generated ``einsum`` code: their Clebsch–Gordan contractions and linears dispatch
to counted ``mm``/``bmm``, but the channel-wise products with per-edge weights ("uvu" paths), the gates and
the spherical harmonics are element-wise ``mul``/``sum`` and count 0 — so FLOPs understate e3nn models
more than transformers (``uncounted_share`` ≈ 0.7 for the tiny NequIP against ≈ 0.6 for the tiny EScAIP
on a CPU, where dropout, RMSNorm and the 600-Gaussian expansion are the uncounted part).

**A training step** is ``task.training_loss(model, batch, generator)`` then ``loss.backward()``, in train
mode — so a model whose forward differentiates (forces as −∇E with ``create_graph``) is counted with its
double backward, and a task that draws extra passes (flow matching's self-conditioning pass with
probability p) is averaged over ``flop_steps`` seeded draws. The optimiser, EMA and data loading are not
part of it. **An inference** is ``task.predict`` (or a given predictor, e.g. a K-rotation twirl) on the
task's first evaluation batch of the same samples, in eval mode under ``no_grad``.

:func:`profile_compute` leaves the model as it found it (mode, gradients, buffers) and the global RNG
untouched, so calling it at the start of a run does not change the run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from equivrepro.metrics.keys import COMPUTE, scalar_key
from equivrepro.task import Batch, Prediction, Task, batch_size

__all__ = ["ComputeProfile", "CUSTOM_FLOP_FORMULAS", "count_flops", "count_parameters", "op_time_shares", "profile_compute"]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: Ops torch's counter has no formula for, counted here (op packet → formula on shapes).
CUSTOM_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of everything ``fn()`` dispatches (forward and any backward it runs): ``(total, {op: flops})``."""
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOP_FORMULAS) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


_COUNTED = {*flop_registry, *CUSTOM_FLOP_FORMULAS}
_IGNORED = {
    "aten.detach",
    "aten.view",
    "aten._unsafe_view",
    "aten.t",
    "aten.transpose",
    "aten.permute",
    "aten.expand",
    "aten.unsqueeze",
    "aten.squeeze",
    "aten.select",
    "aten.slice",
    "aten.alias",
    "aten.as_strided",
    "aten.split",
    "aten.split_with_sizes",
    "aten.unbind",
    "aten.chunk",
    "aten.reshape",
    "aten.lift_fresh",
    "aten.empty",
    "aten.zeros",
}


class _OpTimer(TorchDispatchMode):
    """Wall time of every dispatched op, split by whether the FLOP counter has a formula for it."""

    def __init__(self, synchronize: Callable[[], None] | None):
        super().__init__()
        self.synchronize = synchronize
        self.seconds: dict[str, float] = {}
        self.counted: dict[str, bool] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.synchronize is not None:
            self.synchronize()
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if self.synchronize is not None:
            self.synchronize()
        name = str(func._overloadpacket)
        if name not in _IGNORED:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.counted[name] = func._overloadpacket in _COUNTED
        return out


def op_time_shares(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, dict[str, float]]:
    """Run ``fn()`` once timing every op: ``(share of op time in ops without a FLOP formula, {op: seconds} of those)``.

    Views and allocations are left out. On CUDA every op is synchronised (slow, but the shares are what
    is wanted). The op timer's own Python overhead per op falls outside the timed intervals.
    """
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    timer = _OpTimer(sync)
    with timer:
        fn()
    total = sum(timer.seconds.values())
    uncounted = {k: v for k, v in timer.seconds.items() if not timer.counted[k]}
    share = sum(uncounted.values()) / total if total > 0 else float("nan")
    return share, dict(sorted(uncounted.items(), key=lambda kv: -kv[1]))


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


@dataclass(frozen=True)
class ComputeProfile:
    """Compute of one (task, model, batch size) on one machine; see the module docstring for definitions.

    FLOPs and seconds are per call on the whole batch (``batch_size`` samples); ``*_per_sample`` divide.
    """

    parameters: int
    batch_size: int
    flops_per_step: float
    flops_per_step_min: float
    flops_per_step_max: float
    flops_per_inference: float
    seconds_per_step: float
    seconds_per_inference: float
    uncounted_share: float
    device: str
    threads: int
    uncounted_ops: dict[str, float] = field(default_factory=dict)

    @property
    def flops_per_sample_step(self) -> float:
        return self.flops_per_step / self.batch_size

    @property
    def flops_per_sample_inference(self) -> float:
        return self.flops_per_inference / self.batch_size

    def metrics(self) -> dict[str, float]:
        """The scalars to log (``compute/<name>``)."""
        names = (
            "parameters",
            "batch_size",
            "flops_per_step",
            "flops_per_step_min",
            "flops_per_step_max",
            "flops_per_inference",
            "seconds_per_step",
            "seconds_per_inference",
            "uncounted_share",
            "threads",
        )
        return {scalar_key(COMPUTE, name): float(getattr(self, name)) for name in names}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_of(model: nn.Module, batch: Batch) -> torch.device:
    for v in batch.values():
        if torch.is_tensor(v):
            return v.device
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _preserved(model: nn.Module, device: torch.device):
    """Restore the model's mode, gradients and buffers, and the global RNG, on exit."""
    was_training = model.training
    grads = {id(p): p.grad for p in model.parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            model.train(was_training)
            for p in model.parameters():
                p.grad = grads.get(id(p))
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])


def profile_compute(
    task: Task,
    model: nn.Module,
    batch: Batch,
    *,
    seed: int = 0,
    flop_steps: int = 2,
    warmup: int = 1,
    repeats: int = 3,
    time_ops: bool = True,
    autocast: Callable[[], AbstractContextManager] | None = None,
    predictor: Callable[[Batch], Prediction] | None = None,
) -> ComputeProfile:
    """Parameters, FLOPs and seconds of one training step and one inference on ``batch`` (already on the device).

    Args:
        seed: seeds the generators handed to ``task.training_loss`` / ``task.evaluation_batches``
            (FLOP draw ``i`` uses ``seed + i``).
        flop_steps: training steps counted (mean, min and max reported: > 1 for tasks whose step draws a
            variable amount of work, e.g. a self-conditioning pass with probability p).
        warmup, repeats: timed steps (median of ``repeats`` after ``warmup``) — for steps and inferences.
        time_ops: also run one step under the op timer for ``uncounted_share`` (NaN when off).
        autocast: a factory of the context the training loop runs its step in (mixed precision), or None.
        predictor: batch → prediction used for the inference count (default ``task.predict(model, ·)``);
            e.g. a :class:`~equivrepro.metrics.TwirledPredictor` for a test-time twirl.
    """
    device = _device_of(model, batch)
    amp = autocast or contextlib.nullcontext
    b = batch_size(batch)

    def step(i: int = 0) -> None:
        model.zero_grad(set_to_none=True)
        with amp():
            loss, _ = task.training_loss(model, batch, torch.Generator().manual_seed(seed + i))
        loss.backward()

    def eval_batch() -> Batch:
        return next(iter(task.evaluation_batches(batch, torch.Generator().manual_seed(seed)).values()))

    with _preserved(model, device):
        model.train()
        counts = [count_flops(lambda i=i: step(i))[0] for i in range(max(1, int(flop_steps)))]
        seconds_step = _timed(step, device, warmup, repeats)
        share, uncounted = op_time_shares(step, device) if time_ops else (float("nan"), {})
        model.zero_grad(set_to_none=True)
        model.eval()
        held = eval_batch()
        predict = predictor or (lambda bt: task.predict(model, bt))

        def infer() -> None:
            with torch.no_grad(), amp():
                predict(held)

        flops_inference = count_flops(infer)[0]
        seconds_inference = _timed(infer, device, warmup, repeats)
    return ComputeProfile(
        parameters=count_parameters(model),
        batch_size=b,
        flops_per_step=float(statistics.fmean(counts)),
        flops_per_step_min=float(min(counts)),
        flops_per_step_max=float(max(counts)),
        flops_per_inference=float(flops_inference),
        seconds_per_step=seconds_step,
        seconds_per_inference=seconds_inference,
        uncounted_share=float(share),
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        threads=torch.get_num_threads(),
        uncounted_ops=dict(list(uncounted.items())[:8]),
    )
