"""The one training loop shared by every medssl bundle, pipeline and fine-tuning run.

:class:`Trainer` drives an ``SSLMethod`` (any ``nn.Module`` whose ``forward(batch)`` returns a dict with a
scalar ``"loss"``) for a number of optimiser steps, looping over the loader's epochs as needed. It logs every
scalar the method returns, the learning rate and the throughput to TensorBoard (``output_dir/tb``) and
``output_dir/history.json``, writes images from the method's optional ``images(batch)``, and saves atomic,
resumable checkpoints to ``output_dir/checkpoints/last.pt``.

Resume is exact (bit-identical losses on CPU) when the loader comes from
:func:`medssl.ssl.sampler.make_loader`: the checkpoint holds the method (with its EMA target), optimiser,
scheduler, step, all RNG states (of every rank), the epoch and the position within it.

Under ``torchrun`` the trainer starts the process group itself (gloo on CPU, NCCL on CUDA), wraps the method
in ``DistributedDataParallel`` and lets rank 0 alone write logs and checkpoints. On CUDA the forward pass runs
under bf16 autocast; on CPU training is float32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from medssl.errors import CheckpointError
from medssl.ssl.checkpoint import (
    atomic_write_json,
    get_rng_state,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    set_rng_state,
)
from medssl.ssl.distributed import (
    barrier,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
)
from medssl.ssl.sampler import ResumableRandomSampler, SeededBatchSampler, derive_seed, loader_sampler
from medssl.ssl.schedules import warmup_cosine_scheduler

__all__ = ["Trainer", "load_checkpoint", "resolve_device", "move_to_device", "seed_everything"]

logger = logging.getLogger(__name__)

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
_LRScheduler = torch.optim.lr_scheduler.LRScheduler
SchedulerLike = _LRScheduler | Callable[[torch.optim.Optimizer], _LRScheduler]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → this process's CUDA device (``LOCAL_RANK``) when CUDA is available, else CPU."""
    dev = torch.device(device) if device != "auto" else None
    if dev is None and not torch.cuda.is_available():
        return torch.device("cpu")
    if dev is None or (dev.type == "cuda" and dev.index is None):  # "cuda" alone: this process's GPU
        return torch.device("cuda", get_local_rank() % max(1, torch.cuda.device_count()))
    return dev


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor in a (nested) dict / list / tuple to ``device``; other values stay as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking and device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        moved = [move_to_device(v, device, non_blocking) for v in batch]
        return type(batch)(moved) if isinstance(batch, tuple) and not hasattr(batch, "_fields") else moved
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        if isinstance(batch.get("image"), torch.Tensor):
            return _batch_size(batch["image"])
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return int(v.shape[0])
    if isinstance(batch, list | tuple) and batch:
        return _batch_size(batch[0])
    return 0


class Trainer:
    """Step-based training loop with logging, atomic checkpoints, exact resume and DDP.

    Args:
        method: the ``SSLMethod`` (or any module whose ``forward(batch)`` returns ``{"loss": ..., ...}``;
            other entries are logged as scalars). Optional hooks: ``on_step_end(step, max_steps)``, called
            after every optimiser step on the unwrapped module with ``step`` = steps done so far
            (1 … ``max_steps``), e.g. for the EMA update; ``images(batch) -> dict[str, Tensor]`` for
            TensorBoard (CHW or NCHW in [0, 1]).
        train_loader: an iterable of batches; use :func:`medssl.ssl.sampler.make_loader` for exact resume.
        optimizer: an optimiser over the method's parameters, or a callable ``params -> optimiser`` (e.g. a
            MONAI bundle ``_mode_: "partial"`` entry), called with the method's trainable parameters after
            the method is moved to the device.
        max_steps: optimiser steps to train for (in total, including steps before a resume).
        output_dir: where ``tb/``, ``history.json`` and ``checkpoints/last.pt`` go.
        lr_scheduler: a scheduler (stepped every step), a callable ``optimizer -> scheduler``, or ``None``
            for :func:`~medssl.ssl.schedules.warmup_cosine` (``warmup_steps`` warm-up).
        ckpt_every: save a checkpoint every this many steps (and at the end); 0 saves only at the end.
        log_every: flush scalars to TensorBoard / history every this many steps.
        image_every: log the method's ``images(batch)`` every this many steps; 0 never.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        grad_clip: clip the global gradient norm to this value (and log ``grad_norm``); ``None`` = off.
        seed: seeds Python, NumPy and torch at the start of a fresh run (rank ``r`` uses ``seed + r``).
        warmup_steps: warm-up of the default schedule; default 5 % of ``max_steps``.
        precision: ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"bf16"`` or ``"fp32"``. bf16 is
            never used on CPU.
        progress: show a tqdm progress bar (only on rank 0 and when stderr is a terminal).
        find_unused_parameters: passed to ``DistributedDataParallel``; default the method's attribute of
            the same name, else False.

    Examples::

        trainer = Trainer(method, make_loader(ds, 32, collate), partial(torch.optim.AdamW, lr=1e-4),
                          max_steps=1000, output_dir="runs/jepa")
        history = trainer.fit(resume=True)
    """

    def __init__(
        self,
        method: nn.Module,
        train_loader: Iterable[Any],
        optimizer: OptimizerLike,
        max_steps: int,
        output_dir: str | os.PathLike[str],
        lr_scheduler: SchedulerLike | None = None,
        ckpt_every: int = 100,
        log_every: int = 10,
        image_every: int = 0,
        device: str | torch.device = "auto",
        grad_clip: float | None = None,
        seed: int = 0,
        *,
        warmup_steps: int | None = None,
        precision: str = "auto",
        progress: bool = True,
        find_unused_parameters: bool | None = None,
    ) -> None:
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if ckpt_every < 0 or log_every < 0 or image_every < 0:
            raise ValueError("ckpt_every, log_every and image_every must be >= 0")
        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
        init_distributed()
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.max_steps = int(max_steps)
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.ckpt_every = int(ckpt_every)
        self.log_every = max(1, int(log_every)) if log_every else 0
        self.image_every = int(image_every)
        self.grad_clip = grad_clip
        self.seed = int(seed)
        self.progress = progress
        if precision == "bf16" and self.device.type != "cuda":
            warnings.warn("bf16 autocast is only used on CUDA; training in float32 on CPU", stacklevel=2)
        self.use_bf16 = self.device.type == "cuda" and precision in ("auto", "bf16")

        self.method = method.to(self.device)
        params = [p for p in self.method.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the method has no trainable parameters")
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        elif callable(optimizer):
            self.optimizer = optimizer(params)
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                got = type(self.optimizer).__name__
                raise TypeError(f"optimizer factory returned {got}, not an Optimizer")
        else:
            raise TypeError(f"optimizer must be an Optimizer or a callable, got {type(optimizer).__name__}")
        if lr_scheduler is None:
            self.lr_scheduler = warmup_cosine_scheduler(self.optimizer, self.max_steps, warmup_steps)
        elif isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            self.lr_scheduler = lr_scheduler
        elif callable(lr_scheduler):
            self.lr_scheduler = lr_scheduler(self.optimizer)
        else:
            got = type(lr_scheduler).__name__
            raise TypeError(f"lr_scheduler must be a scheduler or a callable, got {got}")

        self.model: nn.Module = self.method
        if is_distributed():
            if find_unused_parameters is None:
                find_unused_parameters = bool(getattr(method, "find_unused_parameters", False))
            self.model = nn.parallel.DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
        self.train_loader = train_loader
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: dict[str, list[Any]] = {}
        self._pending: list[tuple[int, float, dict[str, torch.Tensor]]] = []
        self._writer: Any = None
        self._samples_since_log = 0
        self._t_last_log = time.perf_counter()
        self._warned_not_resumable = False
        self.history_every_s = 30.0
        self._t_history = time.monotonic()

    # ------------------------------------------------------------------ public API

    @property
    def last_checkpoint(self) -> Path:
        """``output_dir/checkpoints/last.pt``."""
        return self.ckpt_dir / "last.pt"

    def fit(
        self, resume: bool | str | os.PathLike[str] = False, *, stop_at_step: int | None = None
    ) -> dict[str, list[Any]]:
        """Train until ``max_steps`` optimiser steps are done.

        Args:
            resume: ``False`` starts afresh; ``True`` continues from ``output_dir/checkpoints/last.pt`` if it
                exists (else starts afresh); a path continues from that checkpoint (which must exist), or
                from ``PATH/checkpoints/last.pt`` when it is a run's output folder.
            stop_at_step: return early after this many steps (with a checkpoint), keeping the schedules of
                the full ``max_steps`` run, e.g. to train a long run in several sessions.

        Returns:
            The history: per-step lists ``"step"``, ``"loss"``, ``"lr"`` and every other scalar the method
            returned, plus ``"log_step"`` / ``"samples_per_s"`` for throughput.

        Raises:
            CheckpointError: the checkpoint to resume from cannot be loaded or does not fit the method.
            FloatingPointError: the loss became NaN or infinite.
        """
        ckpt_path: Path | None = None
        if resume is True:
            ckpt_path = self.last_checkpoint if self.last_checkpoint.exists() else None
        elif resume:
            ckpt_path = Path(resume)
            if ckpt_path.is_dir() and (ckpt_path / "checkpoints" / "last.pt").is_file():
                ckpt_path = ckpt_path / "checkpoints" / "last.pt"  # a run's output_dir
        if is_distributed():  # rank 0 decides, so that the ranks never disagree about resuming
            decision: list[Any] = [None if ckpt_path is None else str(ckpt_path)]
            dist.broadcast_object_list(decision, src=0)
            ckpt_path = None if decision[0] is None else Path(decision[0])
        if ckpt_path is not None:
            self.load(ckpt_path)
        else:
            if resume is False and self.is_main and self.last_checkpoint.exists():
                warnings.warn(
                    f"{self.last_checkpoint} exists and will be overwritten by this fresh run "
                    "(fit(resume=True) continues it instead)",
                    stacklevel=2,
                )
            seed_everything(self.seed + self.rank)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.ckpt_dir)
            remove_stale_temp_files(self.output_dir)
        pbar = self._progress_bar()
        self._samples_since_log = 0
        self._t_last_log = time.perf_counter()
        self._check_sharding()
        try:
            self._loop(pbar, min(self.max_steps, stop_at_step or self.max_steps))
        finally:
            if pbar is not None:
                pbar.close()
            self.close()
        barrier()
        return self.history

    def load(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore method, optimiser, scheduler, step, RNG and data position from a checkpoint.

        Raises:
            CheckpointError: unreadable checkpoint or one that does not match the method / optimiser.
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        for key in ("optimizer", "step"):
            if key not in ckpt:
                raise CheckpointError(path, f"not a training checkpoint (missing key: {key})")
        try:
            self.method.load_state_dict(ckpt["method"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(path, f"does not match the method: {_first_line(exc)}") from exc
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                self.lr_scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            reason = f"does not match the optimiser/scheduler: {_first_line(exc)}"
            raise CheckpointError(path, reason) from exc
        self.step = int(ckpt["step"])
        data = ckpt.get("data") or {}
        self.epoch = int(data.get("epoch", 0))
        self.batch_in_epoch = int(data.get("batch_in_epoch", 0))
        sampler = loader_sampler(self.train_loader)
        if sampler is not None and "sampler" in data:
            inner = sampler.sampler if isinstance(sampler, SeededBatchSampler) else sampler
            inner.seed = int(data["sampler"].get("seed", inner.seed))
        self.history = {k: list(v) for k, v in (ckpt.get("history") or {}).items()}
        rng = ckpt.get("rng")
        if isinstance(rng, list) and len(rng) == self.world_size:
            set_rng_state(rng[self.rank])
        else:
            warnings.warn(
                f"{path}: RNG states for {len(rng) if isinstance(rng, list) else 0} processes, running "
                f"{self.world_size}; re-seeding from (seed, step, rank)",
                stacklevel=2,
            )
            seed_everything(derive_seed(self.seed, self.step, self.rank))
        return ckpt

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Save the full training state (collective under DDP: every rank must call it; rank 0 writes).

        Also rewrites ``history.json``.

        Returns:
            The checkpoint path on rank 0, ``None`` on the other ranks.
        """
        self._flush_pending(write_json=True)
        rng = get_rng_state()
        if is_distributed():
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if not self.is_main:
            return None
        sampler = loader_sampler(self.train_loader)
        data: dict[str, Any] = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        if sampler is not None:
            inner = sampler.sampler if isinstance(sampler, SeededBatchSampler) else sampler
            data["sampler"] = inner.state_dict()
        state = {
            "step": self.step,
            "max_steps": self.max_steps,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "rng": rngs,
            "data": data,
            "history": self.history,
            "world_size": self.world_size,
            "seed": self.seed,
        }
        return save_checkpoint(self.last_checkpoint if path is None else path, state)

    # ------------------------------------------------------------------ internals

    def _loop(self, pbar: Any, stop_step: int) -> None:
        sampler = loader_sampler(self.train_loader)
        done = self.step >= stop_step
        while not done:
            self._position_loader(sampler)
            fetched = 0
            for batch in self.train_loader:
                fetched += 1
                self._train_step(batch)
                self.batch_in_epoch += 1
                if pbar is not None:
                    pbar.update(1)
                    if self.history.get("loss"):
                        pbar.set_postfix(loss=f"{self.history['loss'][-1]:.4g}", refresh=False)
                if self.step >= stop_step:
                    done = True
                if done or (self.ckpt_every and self.step % self.ckpt_every == 0):
                    self.save_checkpoint()
                if done:
                    break
            if not done:
                if fetched == 0 and self.batch_in_epoch == 0:
                    raise ValueError("train_loader yielded no batch")
                self.epoch += 1
                self.batch_in_epoch = 0
        self._flush_pending(throughput=self._samples_since_log > 0, write_json=True)

    def _position_loader(self, sampler: SeededBatchSampler | ResumableRandomSampler | None) -> None:
        if isinstance(sampler, SeededBatchSampler):
            sampler.set_epoch(self.epoch, self.batch_in_epoch)
            return
        if isinstance(sampler, ResumableRandomSampler):
            batch_size = getattr(self.train_loader, "batch_size", None) or 1
            sampler.set_epoch(self.epoch, self.batch_in_epoch * batch_size)
            return
        inner = getattr(self.train_loader, "sampler", None)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(self.epoch)  # type: ignore[union-attr]
        if self.batch_in_epoch and not self._warned_not_resumable:
            warnings.warn(
                "train_loader cannot start mid-epoch (use medssl.ssl.sampler.make_loader); "
                f"restarting epoch {self.epoch} from its first batch",
                stacklevel=3,
            )
            self._warned_not_resumable = True
        self.batch_in_epoch = 0

    def _train_step(self, batch: Any) -> None:
        self.model.train()
        batch = move_to_device(batch, self.device)
        with self._autocast():
            out = self.model(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(
                f"{type(self.method).__name__}.forward must return a dict with a 'loss' entry, got {type(out).__name__}"
            )
        loss = out["loss"]
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        scalars: dict[str, torch.Tensor] = {"loss": loss.detach().float()}
        if self.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            scalars["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_clip).detach().float()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        on_step_end = getattr(self.method, "on_step_end", None)
        if callable(on_step_end):
            on_step_end(self.step, self.max_steps)
        for k, v in out.items():
            if k == "loss":
                continue
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                scalars[k] = v.detach().float().reshape(())
            elif isinstance(v, int | float):
                scalars[k] = torch.tensor(float(v))
        self._pending.append((self.step, lr, scalars))
        self._samples_since_log += _batch_size(batch)
        if self.log_every and self.step % self.log_every == 0:
            self._flush_pending(throughput=True)
        if self.is_main and self.image_every and self.step % self.image_every == 0:
            self._log_images(batch)

    def _flush_pending(self, throughput: bool = False, write_json: bool = False) -> None:
        if not self._pending:
            if write_json and self.is_main and self.history:
                self._write_history()
            return
        keys = list(dict.fromkeys(k for _, _, s in self._pending for k in s))
        nan = torch.full((), math.nan, device=self.device)
        dev = self.device
        table = torch.stack(
            [torch.stack([sc[k].to(dev) if k in sc else nan for k in keys]) for *_, sc in self._pending]
        )
        if is_distributed():  # log the mean over ranks, so every rank holds the same history
            dist.all_reduce(table, op=dist.ReduceOp.SUM)
            table /= self.world_size
        columns = table.T.tolist()
        values = {k: columns[i] for i, k in enumerate(keys)}
        steps = [st for st, _, _ in self._pending]
        lrs = [lr for _, lr, _ in self._pending]
        self._pending = []
        bad = [st for st, v in zip(steps, values["loss"], strict=True) if not math.isfinite(v)]
        h = self.history
        n_before = len(h.get("step", []))
        h.setdefault("step", []).extend(steps)
        h.setdefault("lr", []).extend(lrs)
        for k in keys:
            col = h.setdefault(k, [None] * n_before)
            col.extend(None if not math.isfinite(v) and k != "loss" else v for v in values[k])
        for k in list(h):
            if k not in keys and k not in ("step", "lr", "log_step", "samples_per_s"):
                h[k].extend([None] * len(steps))
        rate = None
        if throughput:
            now = time.perf_counter()
            elapsed = max(now - self._t_last_log, 1e-9)
            rate = self._samples_since_log * self.world_size / elapsed
            self._samples_since_log = 0
            self._t_last_log = now
            h.setdefault("log_step", []).append(steps[-1])
            h.setdefault("samples_per_s", []).append(rate)
        if self.is_main:
            writer = self._tb()
            for i, st in enumerate(steps):
                writer.add_scalar("train/lr", lrs[i], st)
                for k in keys:
                    v = values[k][i]
                    if math.isfinite(v):
                        writer.add_scalar(f"train/{k}", v, st)
            if rate is not None:
                writer.add_scalar("perf/samples_per_s", rate, steps[-1])
            if write_json or time.monotonic() - self._t_history >= self.history_every_s:
                self._write_history()
        if bad:
            raise FloatingPointError(f"the loss is not finite at step {bad[0]}; stopping")

    def _write_history(self) -> None:
        atomic_write_json(self.output_dir / "history.json", _json_safe(self.history))
        self._t_history = time.monotonic()

    def _check_sharding(self) -> None:
        if self.world_size <= 1:
            return
        sampler = loader_sampler(self.train_loader)
        inner = sampler.sampler if isinstance(sampler, SeededBatchSampler) else sampler
        if isinstance(inner, ResumableRandomSampler):
            if inner.world_size != self.world_size:
                raise ValueError(
                    f"the loader's sampler is sharded for {inner.world_size} process(es), the run has "
                    f"{self.world_size}: build the loader after the process group starts (or pass world_size)"
                )
            return
        if not isinstance(getattr(self.train_loader, "sampler", None), DistributedSampler):
            warnings.warn(
                "running on several processes but the loader is not sharded: every rank sees the same data "
                "(use medssl.ssl.sampler.make_loader)",
                stacklevel=3,
            )

    def _log_images(self, batch: Any) -> None:
        images_fn = getattr(self.method, "images", None)
        if not callable(images_fn):
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        was_training = self.method.training
        self.method.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
                images = images_fn(batch)
        except Exception as exc:  # images are a diagnostic: never let them stop a run
            warnings.warn(
                f"{type(self.method).__name__}.images() failed ({type(exc).__name__}: {_first_line(exc)}); "
                "image logging is off for this run",
                stacklevel=2,
            )
            self.image_every = 0
            return
        finally:
            self.method.train(was_training)
        writer = self._tb()
        for name, img in (images or {}).items():
            if img is None:
                continue
            img = img.detach().float().clamp(0, 1).cpu()
            if img.ndim == 2:
                writer.add_image(f"images/{name}", img, self.step, dataformats="HW")
                continue
            if img.ndim not in (3, 4):
                logger.warning("images()[%r] has shape %s; expected HW, CHW or NCHW", name, tuple(img.shape))
                continue
            if img.shape[-3] not in (1, 3):
                img = img[..., :1, :, :]  # show the first channel
            if img.ndim == 3:
                writer.add_image(f"images/{name}", img, self.step, dataformats="CHW")
            else:
                writer.add_images(f"images/{name}", img, self.step, dataformats="NCHW")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tb(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tb"))
        return self._writer

    def _progress_bar(self) -> Any:
        if not (self.progress and self.is_main and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _json_safe(history: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    return {
        k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in vals] for k, vals in history.items()
    }
