"""The optimizer and the learning rate of each epoch.

Convention: SGD (momentum, weight decay, Nesterov off unless the recipe says so) or AdamW over the
student's and the methods' trainable parameters in one group; the rate of each epoch is what
PyTorch's MultiStepLR/CosineAnnealingLR give (computed once per stage), written into the optimizer
before the epoch (a device tensor in the compiled modes, so nothing recompiles).
"""
from __future__ import annotations

import torch

from kd.errors import KDError


def optimizer(recipe, params, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    raise KDError(f"unknown optimizer '{recipe.optimizer}'; valid: sgd, adamw")


def lr_schedule(schedule: str, lr: float, epochs: int, milestones, gamma: float) -> list[float]:
    """The learning rate of each epoch, exactly as PyTorch's scheduler steps it (its chained form,
    so the floats equal an eager run that steps MultiStepLR/CosineAnnealingLR once per epoch)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    if schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=gamma)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        raise KDError(f"unknown schedule '{schedule}'; valid: multistep, cosine")
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()                                     # no gradient: a no-op that keeps the scheduler quiet
        sched.step()
    return out


def set_lr(opt: torch.optim.Optimizer, lr: float, as_tensor: bool, device: torch.device):
    """Write this epoch's rate: a float for eager, a device tensor (updated in place, so a compiled
    step never recompiles and a CUDA graph reads it) for the compiled modes."""
    for g in opt.param_groups:
        if not as_tensor:
            g["lr"] = float(lr)
        elif isinstance(g["lr"], torch.Tensor) and g["lr"].device == device:
            g["lr"].fill_(lr)
        else:
            g["lr"] = torch.tensor(float(lr), device=device)
