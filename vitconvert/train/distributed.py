"""The processes of a run: one, or those torchrun started (`torch.distributed`, DistributedDataParallel).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and where to meet) in each process's environment; each
process joins the group (NCCL between GPUs, gloo between CPUs), reads its share of every global batch,
and DDP averages the gradients. Only rank 0 prints and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import VitConvertError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device
    joined: bool = False  # this run joined the process group, so it leaves it (a caller's own group stays)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training steps call: `model` itself, or DDP around it."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the processes."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start(device: str | torch.device | None) -> Processes:
    """This process's place in the run, joining torchrun's group if there is one. `device`: default
    cuda when there is a GPU, else cpu; under torchrun a cuda device is this process's LOCAL_RANK GPU."""
    try:
        device = torch.device(device) if device is not None else None
    except RuntimeError as e:
        raise VitConvertError(f"device {device!r}: {e}") from None
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitConvertError(f"device {device}: torch sees no GPU here")
    world = world_size()
    if world == 1:
        return Processes(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), device, joined)


def stop(processes: Processes) -> None:
    if processes.joined and dist.is_initialized():
        dist.destroy_process_group()
