"""The step-based training loop shared by all three tasks.

Why not Lightning: exact resume is the contract here (a killed run continues at the same step with the
same batches, noise and rotations, and its metric rows match an uninterrupted run). Every random draw
of step ``s`` — batch indices, augmentation rotations, the task's noise/time draws, dropout — is a pure
function of ``(seed, s, rank)``, so a checkpoint needs only weights, optimizer, scheduler, EMA and the
step; no loader or RNG state can drift. The loop is ~200 lines and has no hidden state.

Per step: batch → (Haar rotation per sample via ``task.rotate_batch`` if ``trainer.augment``) →
``task.training_loss`` under autocast → finite check → backward (grad scaler for fp16) → clip →
optimizer and LR-schedule step → EMA update → logging, equivariance callback, atomic checkpoint.

The run directory is owned by :class:`equivrepro.runs.RunDir`: the status record says ``running`` while the
run trains, ``finished`` at the end and ``failed`` (with the error) when it raises — a sweep relaunch and
the results table both see it. Stale temporaries of an interrupted atomic write are removed on start.
At the end the run logs and prints the share of its wall time spent in equivariance evaluations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from equivrepro.compute import profile_compute
from equivrepro.metrics import keys
from equivrepro.rotations import haar_rotations
from equivrepro.runs import RunDir
from equivrepro.task import batch_size, to_device
from equivrepro.train.build import build_from_config, plain_config, run_dir_for, run_identity
from equivrepro.train.checkpoint import load_checkpoint, save_checkpoint
from equivrepro.train.distributed import barrier, init_distributed, resolve_device
from equivrepro.train.ema import EMA
from equivrepro.train.equivariance import EquivarianceCallback, evaluation_steps
from equivrepro.train.loggers import Loggers, ResultsFile, WandbSink
from equivrepro.train.optim import build_optimizer
from equivrepro.train.preemption import PreemptionGuard
from equivrepro.train.sampling import StepBatchSampler
from equivrepro.train.schedules import build_scheduler
from equivrepro.train.validate import PRECISIONS, validate_config

log = logging.getLogger("equivrepro.train")

__all__ = ["train", "NonFiniteLossError", "TrainingInterrupted"]

_PRECISIONS = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the message says which checkpoint (if any) is on disk."""


class TrainingInterrupted(RuntimeError):
    """Raised by ``trainer.interrupt_after_step`` (a simulated preemption)."""


def _step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729 + stream) % (2**63 - 1)


def _autocast(device: torch.device, precision: str):
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _validate(cfg: DictConfig) -> None:
    validate_config({node: OmegaConf.to_container(cfg[node], resolve=True) for node in ("trainer", "equivariance") if node in cfg})


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip if finished) the run described by ``cfg``; returns a summary dict."""
    _validate(cfg)
    tcfg = cfg.trainer
    run_id = run_identity(cfg)
    run = RunDir(run_dir_for(cfg))
    max_steps = int(tcfg.max_steps)
    if run.is_finished(max_steps):
        status = run.read_status()
        log.info("run %s already finished at step %s: skipping", run.path, status["step"])
        return {"run_dir": str(run.path), "run_id": run_id, "skipped": True, **status}
    dist_info = init_distributed(str(tcfg.device))
    device = resolve_device(str(tcfg.device), dist_info.local_rank)
    if dist_info.is_main:
        run.clean_stale_temporaries()
    identity = {"run_id": run_id, "wandb_id": run_id}
    try:
        return _train(cfg, run, run_id, identity, dist_info, device, max_steps)
    except TrainingInterrupted:
        raise  # a preemption: the run stays 'running' and resumes from its checkpoint
    except BaseException as exc:
        if dist_info.is_main:
            state = run.read_status()
            run.write_status(
                "failed",
                int(state.get("step", 0)),
                **identity,
                error=f"{type(exc).__name__}: {exc}",
                error_type=type(exc).__name__,
                checkpoint=str(run.last_checkpoint) if run.last_checkpoint.exists() else None,
                **{k: v for k, v in state.items() if k in ("data", "bound")},
            )
        raise


def _train(cfg: DictConfig, run: RunDir, run_id: str, identity: dict, dist_info, device: torch.device, max_steps: int) -> dict[str, Any]:
    tcfg, ecfg = cfg.trainer, cfg.equivariance
    t_start = time.perf_counter()
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(int(cfg.seed))
    task, model, datamodule = build_from_config(cfg)
    # rank 0 first: it builds what is missing (embedded data, index and parse caches) while the others
    # wait, so they only read finished files
    if not dist_info.is_main:
        barrier(dist_info)
    datamodule.setup()
    if dist_info.is_main:
        barrier(dist_info)
    statistics = datamodule.statistics()
    bound = task.bind_data(statistics)
    if bound.get("mismatch"):
        log.warning("the data used disagree with explicit task settings: %s (values from %s)", bound["mismatch"], cfg.data.get("_target_"))
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, max_steps)
    ema = EMA(model, float(tcfg.ema_decay)) if tcfg.ema_decay else None
    precision = str(tcfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")

    ckpt_path = run.last_checkpoint
    start_step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_step = int(state["step"])
        log.info("resuming %s from step %d", run.path, start_step)

    config_dict = plain_config(cfg)
    describe = datamodule.describe()

    def status(state: str, step: int, **extra: Any) -> None:
        if dist_info.is_main:
            run.write_status(state, step, **identity, data=describe, bound=bound, **extra)

    loggers = Loggers([])
    callback = None
    if dist_info.is_main:
        run.write_config(config_dict)
        sinks: list[Any] = [ResultsFile(run.path, resume_step=start_step if ckpt_path.exists() else None)]
        if cfg.logger.get("enabled", False):
            sinks.append(
                WandbSink(
                    run.path,
                    run_id,
                    f"{cfg.name}-{run_id}",
                    config_dict,
                    project=cfg.logger.project,
                    entity=cfg.logger.get("entity"),
                    mode=cfg.logger.mode,
                    group=cfg.logger.get("group"),
                    tags=list(cfg.logger.get("tags") or []),
                )
            )
        loggers = Loggers(sinks)
        status("running", start_step)
        if ecfg.every or ecfg.get("log_points"):
            callback = EquivarianceCallback(
                task,
                datamodule.heldout_dataset,
                datamodule.collate,
                device,
                num_samples=ecfg.num_samples,
                k=ecfg.k,
                batch_size=ecfg.batch_size,
                chunk_size=ecfg.chunk_size,
                seed=ecfg.seed,
                grad_norms=ecfg.grad_norms,
                grad_suffixes=ecfg.get("grad_suffixes"),
                grad_samples=ecfg.get("grad_samples"),
                cube_group=ecfg.cube_group,
                angle_rotations=int(ecfg.get("angle_rotations", 2)),
                angle_suffixes=ecfg.get("angle_suffixes"),
                angle_degrees=tuple(ecfg.get("angle_degrees") or (15, 30, 60, 90, 120, 180)),
                floor=ecfg.floor,
                linear_head=ecfg.get("linear_head"),
                spectrum_l_max=ecfg.get("spectrum_l_max"),
                bootstrap=int(ecfg.get("bootstrap", 1000)),
                train_dataset=datamodule.train_dataset,
                baseline_samples=int(ecfg.get("baseline_samples", 64)),
            )
    eval_at = evaluation_steps(max_steps, int(ecfg.every or 0), int(ecfg.get("log_points") or 0)) if callback is not None else set()

    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    pin = (device.type == "cuda") if str(tcfg.pin_memory) == "auto" else bool(tcfg.pin_memory)
    sampler = StepBatchSampler(
        len(datamodule.train_dataset), int(tcfg.batch_size), int(cfg.seed), start_step, max_steps, dist_info.rank, dist_info.world_size
    )
    loader = DataLoader(
        datamodule.train_dataset, batch_sampler=sampler, collate_fn=datamodule.collate, num_workers=int(tcfg.num_workers), pin_memory=pin
    )
    eval_seconds = 0.0

    def evaluate(step: int) -> dict[str, float]:
        nonlocal eval_seconds
        if callback is None:
            return {}
        t0 = time.perf_counter()
        metrics = callback(ema.model if ema is not None else model, final=step == max_steps)
        dt = time.perf_counter() - t0
        eval_seconds += dt
        metrics[keys.scalar_key(keys.TIME, "equivariance_eval_s")] = dt
        loggers.log(step, metrics)
        return metrics

    def weights(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "config": config_dict,
            "run_id": run_id,
            "statistics": statistics,
        }

    def checkpoint(step: int) -> None:
        if dist_info.is_main:
            save_checkpoint(
                ckpt_path,
                {**weights(step), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()},
            )
            status("running", step)
        barrier(dist_info)

    if dist_info.is_main and tcfg.get("profile_compute", True):
        # parameters, FLOPs and seconds per step and per inference, so any two runs share a compute axis
        # (restores the model, its gradients and the RNG: the run is unchanged)
        first = to_device(
            datamodule.collate([datamodule.train_dataset[i] for i in range(min(int(tcfg.batch_size), len(datamodule.train_dataset)))]),
            device,
        )
        profile = profile_compute(task, model, first, autocast=lambda: _autocast(device, precision), flop_steps=4)
        loggers.log(start_step, profile.metrics())

    snapshot_steps = {int(s) for s in (tcfg.get("snapshot_steps") or [])}
    last: dict[str, float] = {}
    if start_step == 0 and 0 in eval_at:
        last = evaluate(0)
    bar = tqdm(
        total=max_steps, initial=start_step, disable=not (tcfg.progress_bar and dist_info.is_main), desc=run.name, dynamic_ncols=True
    )
    t_last, clip = time.perf_counter(), tcfg.grad_clip
    step = start_step
    headline = keys.key(keys.EQUIV, task.primary_term.name, "pct")
    train_model.train()
    guard = PreemptionGuard(distributed=dist_info.enabled).__enter__()
    try:
        for step_idx, batch in zip(range(start_step, max_steps), loader):
            step = step_idx + 1
            gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step_idx, dist_info.rank, 0))
            torch.manual_seed(_step_seed(cfg.seed, step_idx, dist_info.rank, 1))
            batch = to_device(batch, device, non_blocking=pin)
            if tcfg.augment:
                rot = haar_rotations(batch_size(batch), generator=gen).to(device)
                batch = task.rotate_batch(batch, rot)
            with _autocast(device, precision):
                loss, logs = task.training_loss(train_model, batch, gen)
            if not torch.isfinite(loss.detach()):
                saved = (
                    f"the last checkpoint on disk is {ckpt_path} (step {load_checkpoint(ckpt_path)['step']}), unchanged"
                    if ckpt_path.exists()
                    else "no checkpoint had been written yet"
                )
                raise NonFiniteLossError(
                    f"non-finite training loss ({float(loss.detach())}) at step {step} of run {run.path}; {saved}. Loss parts: {logs}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            grad_norm = float("nan")
            if clip:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip)))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            bar.update(1)
            if dist_info.is_main and (step % int(tcfg.log_every) == 0 or step == max_steps):
                now = time.perf_counter()
                row = {
                    keys.scalar_key(keys.TRAIN, "loss"): float(loss.detach()),
                    keys.scalar_key(keys.TRAIN, "lr"): optimizer.param_groups[0]["lr"],
                    keys.scalar_key(keys.TRAIN, "grad_norm"): grad_norm,
                }
                row.update({keys.scalar_key(keys.TRAIN, k): float(v) for k, v in logs.items()})
                row[keys.scalar_key(keys.TIME, "step_s")] = (now - t_last) / int(tcfg.log_every)
                t_last = now
                loggers.log(step, row)
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            if step in eval_at:
                last = evaluate(step)
                pct = last.get(headline)
                if pct is not None and math.isfinite(pct):
                    bar.set_postfix(loss=f"{float(loss.detach()):.4g}", pct=f"{100 * pct:.2f}%")
            if step % int(tcfg.checkpoint_every) == 0 or step == max_steps:
                checkpoint(step)
            if dist_info.is_main and step in snapshot_steps:
                save_checkpoint(run.snapshot(step), weights(step))  # weights only
            if guard.should_stop():
                checkpoint(step)
                log.warning("preemption signal: checkpoint saved at step %d; handing over to the launcher", step)
                guard.release()
                raise TrainingInterrupted(f"preempted after step {step}; resume by relaunching the same config")
            if tcfg.get("interrupt_after_step") is not None and step == int(tcfg.interrupt_after_step):
                raise TrainingInterrupted(f"interrupted after step {step} (trainer.interrupt_after_step)")
        if step < max_steps:
            raise RuntimeError(f"the training data ran out at step {step} of {max_steps}")
        wall = time.perf_counter() - t_start
        share = eval_seconds / wall if wall > 0 else float("nan")
        if dist_info.is_main:
            loggers.log(step, {keys.scalar_key(keys.TIME, "wall_s"): wall, keys.scalar_key(keys.TIME, "equivariance_share"): share})
            log.info(
                "%s: %d steps in %.0f s this session, of which equivariance evaluations %.0f s (%.1f %%)",
                run.name,
                step - start_step,
                wall,
                eval_seconds,
                100 * share,
            )
    finally:
        guard.__exit__()
        bar.close()
        loggers.close()
    status("finished", step, wall_s=wall, equivariance_eval_s=eval_seconds, equivariance_share=share)
    barrier(dist_info)
    return {"run_dir": str(run.path), "run_id": run_id, "skipped": False, "step": step, "metrics": last, "equivariance_share": share}
