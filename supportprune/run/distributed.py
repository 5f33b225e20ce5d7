"""Data-parallel runs on PyTorch's own engine: torchrun starts the processes, torch.distributed talks.

One ``Cluster`` per run says who this process is. Single-process runs get a cluster of one, whose
collective operations do nothing, so the rest of the code never asks whether it is distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from supportprune.errors import SupportpruneError


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any: ranks agree, e.g. to stop at the same step."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0 if self.distributed else flag

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def same_everywhere(self, value: Any) -> bool:
        """Whether every rank holds an equal ``value`` (a checksum, say)."""
        values = self.all_gather(value)
        return all(v == values[0] for v in values)

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        if self.distributed:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_cluster(device: str = "auto") -> Cluster:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), else a cluster of one.

    NCCL when the processes use CUDA GPUs, gloo on CPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Cluster()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        except (RuntimeError, ValueError) as error:
            raise SupportpruneError(f"cannot join the torchrun process group: {str(error).splitlines()[0]}") from None
    return Cluster(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_cluster(cluster: Cluster) -> None:
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()


def cluster_device(cluster: Cluster, requested: str) -> str:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if cluster.distributed and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{cluster.local_rank}"
    return requested
