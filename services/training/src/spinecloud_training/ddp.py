"""Data-parallel SegResNet training (torch DDP) without torchrun.

``segresnet.train_segresnet`` hands a run here when it should use more than one process
(``world_size_for``): ``Preset.world_size`` when set, else every visible GPU when there are
several. ``launch`` forks the processes itself (``fork_ranks``) and joins them on
``127.0.0.1`` and a free port: NCCL with one GPU per rank (``cuda:<rank>``), gloo on CPU
(intra-op threads shared out between the ranks). The ranks are *forked* (Linux): the request's
case loaders are closures that cannot be pickled for spawned processes, and the launcher
touches no CUDA context before forking (``torch.cuda.device_count`` does not create one);
each rank drops the database connections it inherited. Plain ``os.fork`` rather than
``multiprocessing``: a multiprocessing child runs the parent's after-fork hooks, and kombu's
closes the parent's Redis channels from the child, which blocks for ever reading the answer to
a BRPOP the parent's Celery consumer had sent (seen in a process that had used a Celery client
before training).

Each rank loads only its share of the training cases (``sources[rank::world_size]``, a
per-rank partition instead of a ``DistributedSampler``), shuffles it with its own generator,
and trains a ``DistributedDataParallel`` copy of the network; DDP broadcasts rank 0's weights
at the start and averages gradients at every step, so the weights stay identical across ranks.
Only rank 0 validates, writes checkpoints, the bundle and progress, and reads the cancel flag,
which it broadcasts to the others at every iteration. The run length is the same on every
rank: ``Preset.total_iterations`` of the largest partition (one step = ``world_size`` x
``batch_size`` images).

An error in any rank stops every rank (the launcher terminates the others);
a SpineCloud error is raised again in the caller with its code. On GPU out-of-memory the launcher
applies the out-of-memory rule (``oom.next_fallback``) to all ranks and starts them again from
the last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from spinecloud_training.oom import OomStep, next_fallback
from spinecloud_training.presets import Preset

if TYPE_CHECKING:
    from spinecloud_training.segresnet import (
        CancelCallback,
        ProgressCallback,
        TrainingResult,
        TrainRequest,
    )

__all__ = ["Rank", "launch", "weights_digest", "world_size_for"]

logger = logging.getLogger(__name__)

#: How long a rank waits in a collective: the others wait while rank 0 validates, which on a
#: large validation split takes longer than torch's default (10 min for NCCL).
COLLECTIVE_TIMEOUT = timedelta(hours=6)
_RESULT_FILE = "ddp_result.pkl"
_ERROR_FILE = "ddp_error_rank{rank}.pkl"


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 validates and writes."""
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a broadcast: every rank must call it)."""
        value = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def world_size_for(preset: Preset, device: torch.device) -> int:
    """How many processes train: the preset's ``world_size``, else every GPU when several."""
    if preset.world_size is not None:
        if preset.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {preset.world_size}.")
        return preset.world_size
    if device.type == "cuda" and device.index is None:
        return max(1, torch.cuda.device_count())
    return 1


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers (to compare ranks)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Seconds a rank gets to exit after SIGTERM before SIGKILL, when another rank failed.
_STOP_GRACE_S = 10.0


class RankFailedError(RuntimeError):
    """A rank process exited with a non-zero status (its error, if any, is in its error file)."""


def _stop(pids: dict[int, int]) -> None:
    """Terminate the ranks still running and reap them."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    for pid in list(pids):
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def fork_ranks(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` forked processes and wait for all of them.

    A rank that raises prints its traceback and exits 1; the first non-zero exit stops the
    other ranks and raises RankFailedError. A child leaves with ``os._exit``, so it runs
    none of the parent's exit handlers either.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pids: dict[int, int] = {}
    try:
        for rank in range(nprocs):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                code = 1
                try:
                    fn(rank, *args)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            pids[pid] = rank
        while pids:
            for pid in list(pids):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                rank = pids.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    raise RankFailedError(f"rank {rank} exited with status {code}")
            time.sleep(0.05)
    finally:
        _stop(pids)


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    request: TrainRequest,
    progress: ProgressCallback | None,
    should_cancel: CancelCallback | None,
) -> None:
    """One rank: join the group, train, leave the result (rank 0) or the error in a file."""
    from spinecloud_shared.db.session import dispose_engines
    from spinecloud_training.segresnet import run_rank

    dispose_engines(close=False)  # the parent's pooled connections stay the parent's
    cuda = request.device != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    folder = request.checkpoint_dir
    try:
        result = run_rank(
            request,
            Rank(rank, world_size, device),
            progress=progress if rank == 0 else None,
            should_cancel=should_cancel if rank == 0 else None,
        )
        if rank == 0:
            (folder / _RESULT_FILE).write_bytes(pickle.dumps(result))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            (folder / _ERROR_FILE.format(rank=rank)).write_bytes(pickle.dumps(exc))
        raise
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _rank_errors(folder: Path, world_size: int) -> list[BaseException]:
    errors = []
    for rank in range(world_size):
        path = folder / _ERROR_FILE.format(rank=rank)
        if path.is_file():
            with contextlib.suppress(Exception):
                errors.append(pickle.loads(path.read_bytes()))
            path.unlink(missing_ok=True)
    return errors


def launch(
    request: TrainRequest,
    world_size: int,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    start: Callable[..., Any] = fork_ranks,
) -> TrainingResult:
    """Train with ``world_size`` processes (module docstring); rank 0's result.

    Raises the first rank's SpineCloudError (its code kept), GpuMemoryError when the
    out-of-memory rule has nothing left, and RuntimeError for anything else.
    """
    from spinecloud_shared.errors import SpineCloudError

    folder = request.checkpoint_dir
    folder.mkdir(parents=True, exist_ok=True)
    steps: list[OomStep] = list(request.oom_steps)
    started = time.time()
    while True:
        (folder / _RESULT_FILE).unlink(missing_ok=True)
        _rank_errors(folder, world_size)
        try:
            start(
                _rank_main,
                args=(world_size, _free_port(), request, progress, should_cancel),
                nprocs=world_size,
            )
        except Exception as exc:
            errors = _rank_errors(folder, world_size)
            oom = [e for e in errors if isinstance(e, torch.cuda.OutOfMemoryError)]
            known = [e for e in errors if isinstance(e, SpineCloudError)]
            if known:
                raise known[0] from exc
            if not oom:
                raise RuntimeError(f"a DDP training process failed: {exc}") from exc
            preset, step = next_fallback(request.preset)  # raises GpuMemoryError at the floor
            steps.append(step)
            logger.warning("GPU out of memory in a DDP run; %s, all ranks restart", step.change)
            checkpoint = folder / "checkpoint.pt"
            resumed = request.resume or (
                checkpoint.is_file() and checkpoint.stat().st_mtime >= started
            )
            request = replace(request, preset=preset, resume=resumed, oom_steps=tuple(steps))
            continue
        result: TrainingResult = pickle.loads((folder / _RESULT_FILE).read_bytes())
        (folder / _RESULT_FILE).unlink(missing_ok=True)
        return result
