"""Several processes, one run: the world a process belongs to under ``torchrun`` and the few collectives a run uses.

``torchrun --nproc-per-node N -m dfcompress run ...`` starts N copies of the command; each reads RANK, WORLD_SIZE
and LOCAL_RANK from its environment (:func:`world_from_env`) and joins the process group (:func:`init_world`:
NCCL on CUDA devices, gloo on the CPU). Without those variables a process is a world of one and nothing here
calls torch.distributed. What is shared and how:

- synthesis: shard ``i`` of a data set is made by rank ``i % N`` (:meth:`World.owns`) from its own seed, so the data
  set does not depend on who made which shard; ranks record their shards in side files and rank 0 merges them
  into the manifest (:mod:`dfcompress.data.synthetic`);
- training: DistributedDataParallel, each rank taking its slice of every global batch (:meth:`World.part`);
- everything that writes the run's reports, models and checkpoints, evaluates or prints is rank 0's.

Every collective has a timeout (``DFCOMPRESS_DIST_TIMEOUT`` seconds, default 1800): a rank that died or hangs makes
the others fail with one line instead of waiting forever. See docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping

from .errors import ConfigError, DFCompressError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "DFCOMPRESS_DIST_TIMEOUT"


class PeerFailure(DFCompressError):
    """Another process of the run failed, or did not answer a collective within the timeout."""


def timeout_seconds(env: Mapping[str, str] = os.environ) -> float:
    text = env.get(TIMEOUT_ENV, "1800")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds")
    return value


@dataclass(frozen=True)
class World:
    """The processes of one run: this one is ``rank`` of ``size``; ``local_rank`` numbers it on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether work item ``index`` (a shard) is this rank's."""
        return index % self.size == self.rank

    def part(self, batch: Any) -> Any:
        """This rank's slice of a global batch (every ``size``-th item from ``rank``): the slices of all ranks
        cover the batch exactly once, without the repeated items a padded DistributedSampler adds."""
        return batch[self.rank::self.size] if self.distributed else batch

    def barrier(self, what: str) -> None:
        """Wait for every rank to reach ``what``."""
        if self.distributed:
            self._collective(what, lambda dist: dist.monitored_barrier(timeout=timedelta(seconds=timeout_seconds()))
                             if dist.get_backend() == "gloo" else dist.barrier())

    def any(self, flag: bool, what: str) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a stop request that must end every rank at the same step)."""
        if not self.distributed:
            return flag
        import torch

        def reduce(dist: Any) -> bool:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            value = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            return bool(value.item() > 0)

        return self._collective(what, reduce)

    def broadcast(self, value: Any, what: str) -> Any:
        """Rank 0's ``value`` (a picklable object), on every rank."""
        if not self.distributed:
            return value

        def send(dist: Any) -> Any:
            box = [value if self.is_main else None]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        return self._collective(what, send)

    @contextlib.contextmanager
    def main_first(self, what: str) -> Iterator[None]:
        """Run the block on rank 0, then on the other ranks (e.g. create a directory, fill a cache, then read it).
        A DFCompressError on rank 0 is raised on every rank with rank 0's message."""
        if not self.distributed:
            yield
            return
        if self.is_main:
            try:
                yield
            except DFCompressError as exc:
                self.broadcast(f"{type(exc).__name__}:{exc}", what)
                raise
            self.broadcast(None, what)
        else:
            failure = self.broadcast(None, what)
            if failure is not None:
                raise PeerFailure(f"rank 0 failed: {failure.partition(':')[2]}")
            yield

    def _collective(self, what: str, call: Any) -> Any:
        import torch.distributed as dist

        try:
            return call(dist)
        except RuntimeError as exc:  # DistBackendError, timeouts, a peer that closed its connection
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise PeerFailure(f"rank {self.rank}/{self.size}: another process of this run failed or did not reach "
                              f"'{what}' within {timeout_seconds():.0f} s ({TIMEOUT_ENV}); its own message says why "
                              f"[{first}]") from None


SINGLE = World()


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """The world torchrun (or any launcher setting RANK, WORLD_SIZE, LOCAL_RANK) put this process in."""
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=local)


def uses_cuda(device: str) -> bool:
    import torch

    return (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available()


def init_world(device: str = "auto", env: Mapping[str, str] = os.environ) -> World:
    """Join the process group of this run (once per process); a world of one without torchrun's variables."""
    world = world_from_env(env)
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        return world
    cuda = uses_cuda(device)
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank} but this machine has {torch.cuda.device_count()} "
                              "GPU(s); start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds(env)))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"rank {world.rank}: could not join the process group ({backend}): "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    logger.info("rank %d of %d on %s (local rank %d, %s)", world.rank, world.size, socket.gethostname(),
                world.local_rank, backend)
    return world


def close_world() -> None:
    """Leave the process group (if this process joined one)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str, world: World) -> str:
    """The device spelling for this process: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` in a world of several
    processes on a CUDA machine (one GPU per process); anything else is kept."""
    if world.distributed and device in ("auto", "cuda") and uses_cuda(device):
        return f"cuda:{world.local_rank}"
    if world.distributed and device == "auto":
        return "cpu"
    return device
