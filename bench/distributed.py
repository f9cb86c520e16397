"""torchrun data parallelism: rank 0 leads, the other ranks follow.

`torchrun --nproc-per-node N -m bench compare ...` (or across nodes, with torchrun's own rendezvous) starts N copies
of the command. Rank 0 runs it as a single process would: it checks the input, prepares the data, plans, decides
what to train and alone writes files. Each training it starts (`one_run.train_run`) is announced to the other ranks
as a `TrainJob`; they build the same phases from it, train their slice of every step's global batch in lockstep
(gradients averaged by DistributedDataParallel) and write nothing. Every rank measures its own costs; the
collectors combine them at each eval point and phase end (`CollectorSet`).

The results do not depend on N: every rank draws the same global batch and takes rows
[rank x B/N, (rank+1) x B/N), the loss is normalised by the global number of scored tokens, rank 0 plans the steps
(and their FLOPs) exactly as one process would, and the ranks agree at every point where losses are read: a
non-finite loss on any rank stops all of them at the same step, and so does a stop signal any rank received
(bench/stopping.py: the largest signal number over the ranks, `max_over_ranks`; rank 0 alone writes the checkpoint).

Why DDP and not FSDP: growbench's largest sizes (BERT-Large, 340M parameters; GPT-2-medium, 355M) hold their fp32
weights, gradients and AdamW state in about 16 bytes per parameter, 5.7 GB, plus activations that `--micro-batch`
bounds: every rank fits a whole replica in an 80 GB GPU with room to spare, so sharding the state would only add
communication. FSDP pays from a few billion parameters on, beyond what the methods here are benchmarked at.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.calibration import CalibrationTable
    from bench.checkpoint import Checkpointing
    from bench.phases import Phase
    from bench.runner.prepare import Prepared
    from bench.train import Budget, LoopConfig

TIMEOUT = timedelta(hours=6)
"""How long a rank waits in a collective: the followers wait through everything rank 0 does alone (data, tokenizer,
calibration) between two trainings."""
TEST_NAN = "GROWBENCH_TEST_NAN"
"""Tests only: `RANK:STEP` makes that rank's loss NaN at that global step (the other ranks' stay finite)."""
TEST_NO_WRITES = "GROWBENCH_TEST_NO_WRITES"
"""Tests only: a follower rank reports, on stderr at exit, every file Python opened for writing or moved."""


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = ""
    devices: tuple[str, ...] = ()  # under torchrun each rank's device, in rank order (the manifest records them)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def node_leader(self) -> bool:
        """The first rank of its node: it alone measures what the node shares (CPU and RAM energy)."""
        return self.local_rank == 0


_world = World()


def world() -> World:
    return _world


def start(device: str) -> World:
    """Join torchrun's process group when torchrun started this process (WORLD_SIZE > 1): NCCL for CUDA (each rank on
    GPU LOCAL_RANK), gloo for a CPU run."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or _world.distributed:
        return _world
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise BenchError(f"torchrun local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank,
                   int(os.environ.get("LOCAL_WORLD_SIZE", "1")), backend)
    here = torch.cuda.get_device_name(local_rank) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    _world = replace(_world, devices=tuple(gather(here)))
    if os.environ.get(TEST_NO_WRITES) and not _world.leader:
        _report_writes()
    return _world


def stop() -> None:
    if _world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value`, on every rank (pickled: for plans, checkpoints and jobs, not for tensors every step)."""
    if not _world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not _world.distributed:
        return [value]
    values: list[Any] = [None] * _world.size
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if _world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def min_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if _world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def max_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if _world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def check_batch(batch_size: int, micro_batch: int | None) -> None:
    """The global batch splits into equal rank slices (every rank the same shapes and FLOPs), each of whole
    micro-batches."""
    size = _world.size
    if batch_size % size:
        raise BenchError(f"the batch ({batch_size} rows) does not split evenly over {size} processes; "
                         f"run a number of processes that divides {batch_size}")
    rows = batch_size // size
    if micro_batch and micro_batch < rows and rows % micro_batch:
        raise BenchError(f"--micro-batch {micro_batch} does not divide a process's slice of the batch "
                         f"({rows} rows of {batch_size} over {size} processes)")


def _poison_at() -> tuple[int, int] | None:
    text = os.environ.get(TEST_NAN)
    return tuple(int(part) for part in text.split(":")) if text else None


_POISON_AT = _poison_at()  # read once: the step loop asks at every micro-batch


def poisoned_for_test(loss: torch.Tensor, step: int) -> torch.Tensor:
    """`loss`, made NaN on the rank and global step GROWBENCH_TEST_NAN names (tests of the ranks' agreement)."""
    if _POISON_AT is None or _POISON_AT != (_world.rank, step):
        return loss
    return loss * float("nan")


# ----------------------------------------------------------------------------------- jobs: rank 0 leads

PhaseSource = Callable[[], Iterator["Phase"]]
"""What builds a run's phases (`functools.partial(method.phases, context)`): picklable, so every rank builds its own
copy of the same phases."""


@dataclass
class TrainJob:
    """One training rank 0 starts; the followers train their part of it."""

    phases: PhaseSource
    budget: Budget
    prepared: Prepared
    seed: int
    loop: LoopConfig
    prices: dict
    country: str
    init_only: bool
    calibration: CalibrationTable | None
    checkpoint: Checkpointing | None


def lead(job: TrainJob) -> None:
    """Rank 0: announce a training to the followers (nothing without torchrun)."""
    if _world.distributed:
        broadcast(job)


def finish() -> None:
    """Rank 0: its command is over; the followers return."""
    if _world.distributed:
        broadcast(None)


def follow(train: Callable[[TrainJob], Any]) -> None:
    """A follower rank: train each job rank 0 announces, on this rank's device, until rank 0 finishes."""
    while (job := broadcast(None)) is not None:
        job.loop = replace(job.loop, device=rank_device(job.loop.device))
        train(job)


def rank_device(device: torch.device) -> torch.device:
    """This rank's device of the kind the run uses: its own GPU (LOCAL_RANK) on CUDA."""
    return torch.device("cuda", _world.local_rank) if device.type == "cuda" and _world.distributed else device


def _report_writes() -> None:
    """Record every file this process opens for writing, creates, moves or deletes; print them at exit."""
    import atexit

    writes: list[str] = []
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            mode, open_flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (open_flags or 0) & flags:
                writes.append(f"open {os.fsdecode(args[0])}")
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
                       "os.link", "os.symlink"):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    atexit.register(lambda: print(f"growbench-test-writes rank {_world.rank}: {writes!r}", file=sys.stderr,
                                  flush=True))
