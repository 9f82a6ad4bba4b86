"""Processes and devices: torchrun's environment, DDP collectives, device and precision choice."""

from __future__ import annotations

import dataclasses
import importlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from gcnn import devices
from gcnn.errors import GcnnError
from gcnn.precision import choose_for_model, hardware_choice
from gcnn.training.config import TrainConfig


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float] | torch.Tensor, device) -> list[float]:
        """Sums over ranks (a no-op on one process); `.tolist()` is the one host sync."""
        tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor.tolist()


def env_dist() -> Dist:
    """The ranks as torchrun announces them (RANK / WORLD_SIZE / LOCAL_RANK); no group yet."""
    return Dist(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def run_device(config: TrainConfig, d: Dist) -> torch.device:
    """The device this process trains on (checked without touching any process group)."""
    return resolve_device(config.device, d.local_rank if d.enabled else None)


def init_distributed(config: TrainConfig) -> tuple[Dist, torch.device]:
    """Create the process group (torchrun also sets MASTER_ADDR / MASTER_PORT)."""
    d = env_dist()
    device = run_device(config, d)
    if d.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Import torch._dynamo BEFORE the process group exists. DistributedDataParallel imports
        # it lazily, and importing it while a group exists leaves ~10 references to that group
        # inside dynamo (torch 2.13), so destroy_process_group() cannot free the group: its gloo
        # worker threads then live on into interpreter shutdown, where one of them, releasing
        # the tensors of the last collective (whose Python objects need the GIL), aborts the
        # process ("terminate called without an active exception", SIGABRT after a successful
        # run). With dynamo imported first, destroy_process_group() frees the group and joins
        # its threads while the interpreter is still alive.
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device


def data_parallel(module: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """`module` under DistributedDataParallel when there are several processes. Unused
    parameters are allowed: a batch may leave some adaptive-softmax tail clusters unused."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def resolve_device(name: str, local_rank: int | None) -> torch.device:
    """The device of this process: --device checked (gcnn.devices), then each rank's own GPU."""
    name = devices.resolve_device(name)
    if local_rank is not None and name.startswith("cuda"):
        # several processes: each takes the GPU of its local rank
        if name != "cuda":
            raise GcnnError(
                f"--device {name}: with several processes every rank would use that one GPU;"
                " pass --device cuda (or auto) and each rank takes its LOCAL_RANK's GPU"
            )
        name = devices.resolve_device(f"cuda:{local_rank}")
    return torch.device(name)


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    """What "auto" means before the model exists: what the hardware decides (gcnn.precision's
    one chooser: bf16 on a GPU with native bf16, fp32 where there is no bf16 path), and "auto"
    still where only a measurement can tell (the trainer then times both on the model)."""
    if config.precision != "auto":
        return config.precision
    return hardware_choice(device) or "auto"


def measure_precision(model, batch, d: Dist, device: torch.device, log):
    """fp32 or bf16, whichever runs this model's training step on `batch` faster here, and the
    measurement (rank 0 times it, every rank follows: ranks must agree on the numerics)."""
    choice, measured = ["fp32"], None
    if d.is_main:
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        measured = choose_for_model(model, inputs, targets, "train", log)
        choice = [measured.precision]
    if d.enabled:
        dist.broadcast_object_list(choice, src=0)
    return choice[0], measured


class LossModule(nn.Module):
    """model.loss as a forward(), so DistributedDataParallel sees (and syncs) the whole loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, state=None, plan=None):
        return self.model.loss(inputs, targets, state, plan)


# --- state that must survive a restart ---------------------------------------------------------


def state_to_plain(state, d: Dist):
    """The LSTM's carried (h, c) of ALL ranks, rows in rank order, as CPU tensors (GCNN: None).

    A collective: every rank must call it. Tensors are (layers, rows, hidden)."""
    if state is None:
        return None
    out = []
    for s in state:
        s = s.detach().contiguous()
        if d.enabled:
            parts = [torch.empty_like(s) for _ in range(d.world_size)]
            dist.all_gather(parts, s)
            s = torch.cat(parts, dim=1)
        out.append(s.cpu())
    return out


def state_from_plain(state, d: Dist, rows: int, device):
    """This rank's rows of a state saved by `state_to_plain`."""
    if state is None:
        return None
    return tuple(s[:, d.rank * rows : (d.rank + 1) * rows].to(device) for s in state)
