"""One cell on several GPUs: data-parallel training launched by torchrun (or a multi-task Slurm job).

    torchrun --nproc_per_node 4 -m kd run CELL --seed 0

Conventions (they change numbers, so they are all here):
- Process group from the environment, as torchrun sets it and torchdistill's `init_distributed_mode`
  / torchvision's reference scripts read it: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
  (`env://`). In a Slurm job of several tasks started by submitit, submitit's
  TorchDistributedEnvironment exports the same variables from SLURM_PROCID & co. Backend: NCCL on
  CUDA (one GPU per rank, cuda:LOCAL_RANK), gloo on the CPU.
- The recipe's batch_size is the *global* batch. The world size must divide it; each rank trains on
  batch_size / world images per step. Every rank draws the same epoch permutation (and, for in-memory
  data, the same augmentation of the whole global batch) from the per-epoch generator and keeps its
  contiguous slice of each global batch (kd.data.shard_slice). The images a step sees are therefore
  exactly those of the single-process run with the same global batch.
- Gradients are averaged over ranks before every optimizer step, as DistributedDataParallel does
  (an all-reduce of the mean), over *all* trained parameters: the student's and the methods' own
  (CRD embeddings, FitNet regressors, ...). It is done by one flat all-reduce in an optimizer
  step-pre-hook rather than by wrapping the student in DDP, because the loop calls the student
  through `.extract()` (which DDP's forward does not see) and the methods hold trainable parameters
  outside the student. On the last, smaller batch of an epoch the ranks' slices may differ by one
  image; each rank's gradient is weighted by its share of the global batch (n_rank * world / n),
  so the average is the gradient of the global-batch mean loss, as in the single-process run.
- The teacher is not wrapped: it is frozen, every rank runs it on its own slice.
- BatchNorm statistics are per rank (each rank normalises its slice and keeps its own running
  statistics; rank 0's are evaluated and saved) unless the recipe sets `sync_bn: true`, which
  converts the student's BatchNorm layers to SyncBatchNorm (CUDA only).
- The learning rate for the global batch is the recipe's rule (`lr_scaling`, kd.catalog.cells.Recipe),
  never changed here: the same global batch on more GPUs keeps the LR.
- Only rank 0 evaluates, writes the per-epoch resume state, the checkpoint and the result line;
  the line records world_size, global_batch and per_rank_batch. After a kill, every rank resumes
  from rank 0's last per-epoch state.
- The recorded train_loss is the mean over ranks of each rank's mean batch loss.
Exact equality with one process is not expected: per-rank BatchNorm statistics (a batch of 32
normalised as 2 x 16) and the order of floating-point reductions differ.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from kd.engine.execution import pick_device
from kd.errors import KDError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    share: float = 1.0        # this rank's share of the current global batch x world size (gradient weight)

    @property
    def main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world() -> World:
    return _WORLD


def launch_rank() -> int:
    """This process's rank among several kd processes, for deciding who prints: the joined process
    group's rank, else torchrun's RANK (torchrun sets TORCHELASTIC_RUN_ID beside it), else 0. A stray
    RANK or SLURM_PROCID in the environment of a lone process never silences it."""
    if _WORLD.size > 1:
        return _WORLD.rank
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    return 0


def _env_int(var: str, default: int) -> int:
    v = os.environ.get(var, "").strip()
    if not v:
        return default
    if not (v.isascii() and v.isdigit()):
        raise KDError(f"{var}={os.environ[var]!r} in the environment is not a whole number; unset it, or start "
                      f"several processes with torchrun")
    return int(v)


def environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them (RANK, WORLD_SIZE, LOCAL_RANK, with
    MASTER_ADDR/PORT for the rendezvous), checked: a WORLD_SIZE without the rest (set by hand, or left
    over from another launcher) is one line, never a traceback from the rendezvous."""
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return 0, 1, 0
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
    if missing:
        raise KDError(f"WORLD_SIZE={size} in the environment without {', '.join(missing)}: start the processes with "
                      f"torchrun (torchrun --nproc_per_node {size} -m kd ...) or unset WORLD_SIZE")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if rank >= size:
        raise KDError(f"RANK={rank} in the environment is not below WORLD_SIZE={size}")
    _env_int("MASTER_PORT", 0)
    return rank, size, local


def torchrun_error_file(message: str) -> None:
    """Under torchrun, hand the one-line error to torchrun's error file (TORCHELASTIC_ERROR_FILE, in
    the format of torch.distributed.elastic's ErrorHandler), so that its failure report names it as
    the root cause instead of a hint about tracebacks."""
    import json
    import time
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or not os.environ.get("TORCHELASTIC_RUN_ID"):
        return
    try:
        with open(path, "w") as f:
            json.dump({"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                                       "timestamp": str(int(time.time()))}}}, f)
    except OSError:
        pass


def _from_submitit() -> None:
    """In a submitit job of several tasks, export torchrun's variables (MASTER_ADDR/PORT, RANK, ...)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit
    try:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except (KeyError, ValueError, RuntimeError) as e:
        raise KDError(f"SUBMITIT_EXECUTOR={os.environ['SUBMITIT_EXECUTOR']!r} in the environment, but this process is "
                      f"not a submitit job ({type(e).__name__}: {e}); unset it") from None


def check_batch(batch_size: int, size: int, num_train: int | None = None) -> None:
    """One-line errors for a world size the global batch cannot be split over."""
    if batch_size % size:
        raise KDError(f"world size {size} does not divide the global batch {batch_size}; "
                      f"use a world size that divides it or --batch-size a multiple of {size}")
    if num_train is not None and 0 < num_train % batch_size < size:
        raise KDError(f"the last batch of an epoch has {num_train % batch_size} images, fewer than the "
                      f"{size} ranks; change the world size, the batch or the subset")


def setup(device: torch.device | None, batch_size: int) -> torch.device:
    """Join the process group when launched with several processes; return this rank's device.
    A single process (WORLD_SIZE unset or 1) is left alone."""
    global _WORLD
    if _WORLD.size > 1:                       # already joined (a teacher trained earlier in this process)
        check_batch(batch_size, _WORLD.size)
        return device or _rank_device(_WORLD.local_rank)
    _from_submitit()
    _, size, local = environment()
    if size <= 1:
        return device or pick_device()
    check_batch(batch_size, size)
    if device is None:
        device = _rank_device(local)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    import torch.distributed as td
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend, init_method="env://")
    _WORLD = World(td.get_rank(), td.get_world_size(), local, backend)
    return device


def _rank_device(local: int) -> torch.device:
    return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")


def prepare_student(student: nn.Module, sync_bn: bool) -> nn.Module:
    """SyncBatchNorm when the recipe asks for it; rank 0's parameters and buffers on every rank
    (as DDP does at construction). The student is never wrapped."""
    w = _WORLD
    if w.size == 1:
        return student
    if sync_bn:
        if w.backend != "nccl":
            raise KDError("sync_bn: true needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    broadcast(student)
    return student


def broadcast(module: nn.Module) -> None:
    import torch.distributed as td
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            td.broadcast(t.data, src=0)


def attach(opt: torch.optim.Optimizer) -> None:
    """Average gradients over ranks before each step of `opt` (DDP's mean), weighted by each rank's
    share of the global batch (World.share, set per batch by the sharded data iterator).

    A parameter whose gradient is None on one rank but not on another (a branch one rank's slice did
    not reach) takes part with zeros there, so every rank all-reduces the same flat lengths (gloo would
    raise, NCCL hang) and steps the same parameters; a parameter with no gradient on any rank stays
    None everywhere (the optimizer skips it, as in one process)."""
    if _WORLD.size == 1:
        return
    import torch.distributed as td
    for g in opt.param_groups:        # same start everywhere, whatever each rank loaded
        for p in g["params"]:
            with torch.no_grad():
                td.broadcast(p.data, src=0)
    params = [p for g in opt.param_groups for p in g["params"]]

    def average(optimizer, args, kwargs):
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8,
                           device="cuda" if _WORLD.backend == "nccl" else "cpu")
        td.all_reduce(has, op=td.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist()) if h]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for p in live:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        scale = _WORLD.share / _WORLD.size
        for group in by_kind.values():
            flat = torch.cat([gr.reshape(-1) for gr in group]).mul_(scale)
            td.all_reduce(flat)
            offset = 0
            for gr in group:
                gr.copy_(flat[offset:offset + gr.numel()].view_as(gr))
                offset += gr.numel()

    opt.register_step_pre_hook(average)


def gather(t: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """The ranks' tensors concatenated in rank order along dim 0 (sizes may differ by one on an
    epoch's last batch), and this rank's rows in it; (t, all rows) in one process."""
    if _WORLD.size == 1:
        return t, slice(0, t.shape[0])
    import torch.distributed as td
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(_WORLD.size)]
    td.all_gather(sizes, n)
    sizes = [int(x) for x in sizes]
    pad = t.new_zeros((max(sizes) - t.shape[0], *t.shape[1:]))
    parts = [t.new_empty((max(sizes), *t.shape[1:])) for _ in sizes]
    td.all_gather(parts, torch.cat([t, pad]).contiguous())
    start = sum(sizes[:_WORLD.rank])
    return torch.cat([p[:k] for p, k in zip(parts, sizes)]), slice(start, start + t.shape[0])


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (t itself in one process)."""
    if _WORLD.size == 1:
        return t
    import torch.distributed as td
    t = t.clone()
    td.all_reduce(t)
    return t


def shard(n_batch: int, rank: int | None = None, size: int | None = None) -> slice:
    """This rank's contiguous slice of a global batch of n_batch samples (torch.tensor_split sizes:
    the first n_batch % size ranks get one more); sets World.share for the gradient weight."""
    rank = _WORLD.rank if rank is None else rank
    size = _WORLD.size if size is None else size
    base, extra = divmod(n_batch, size)
    start = rank * base + min(rank, extra)
    n = base + (rank < extra)
    if rank == _WORLD.rank and size == _WORLD.size:
        _WORLD.share = n * size / n_batch
    return slice(start, start + n)


def mean(value: float) -> float:
    """The mean of a per-rank number over ranks (the epoch's train loss)."""
    if _WORLD.size == 1:
        return value
    import torch.distributed as td
    t = torch.tensor([value], dtype=torch.float64)
    if _WORLD.backend == "nccl":
        t = t.cuda()
    td.all_reduce(t)
    return float(t.item()) / _WORLD.size


def barrier_and_share(obj):
    """Wait for rank 0 (its checkpoint written) and hand its object (the record) to every rank."""
    if _WORLD.size == 1:
        return obj
    import torch.distributed as td
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def provenance(recipe) -> dict:
    """What a result line records about the parallel layout and the LR rule for its global batch."""
    w = _WORLD
    return {"world_size": w.size, "global_batch": recipe.batch_size, "per_rank_batch": recipe.batch_size // w.size,
            "sync_bn": bool(recipe.sync_bn and w.size > 1), "dist_backend": w.backend,
            "lr_scaling": recipe.lr_scaling, "lr_factor": recipe.lr_factor}
