"""DML: Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning". CVPR 2018, arXiv:1706.00384.

Online distillation without a teacher: a cohort of K networks (the student and `peers` fresh copies of
its architecture) is trained together; network k minimises eq. (10) of the paper,
L_k = CE(z_k, y) + 1/(K-1) sum_{l != k} KL(p_l || p_k). Reference implementation followed:
AberHu/Knowledge-Distillation-Zoo train_dml.py (two nets, KL with batchmean, other net detached).

Convention: all members are updated in one optimizer step, each on its own loss with the other
members' probabilities detached (as the paper's alternating updates, where the other network is
fixed during each update; with detached targets no member's gradient reaches another). Returned
terms: `kl` = the student's mimicry term (the loop adds ce_weight * CE for the student), `peer_ce` +
`peer_kl` = the peers' own CE and mimicry terms; the cell weight multiplies all three, so the paper's
loss needs ce_weight 1 and weight 1. KL is batchmean and multiplied by T**2 (kd.kd_loss; T = 1, the
paper's, makes it plain KL). Peers are deep copies of the student with every parameter redrawn, from
the method's own generator (seeded from the run's RNG), from a normal with the original tensor's
mean and std: since the method is built right after the student, this reproduces the scale of the
architecture's own initialisation (kaiming-normal for the zoo ResNets/WRN/VGG), which
reset_parameters (PyTorch defaults, ~6x smaller conv variance) would not. BN statistics are reset.
Evaluated model: the student (member 0).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from kd.errors import KDError
from kd.methods.contract import Context, Method, Step
from kd.methods.kd import kd_loss
from kd.registry import METHODS


@torch.no_grad()
def fresh_copy(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """A deep copy of `module` with independent parameters drawn like the original's (see above)."""
    new = copy.deepcopy(module)
    for p in new.parameters():
        std = p.std() if p.numel() > 1 else torch.zeros((), device=p.device)
        p.copy_(p.mean() + std * torch.randn(p.shape, generator=gen).to(p))
    for m in new.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return new


def own_generator() -> torch.Generator:
    """A CPU generator seeded from the global RNG (which the loop seeds per run)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


def mimicry(logits: list[torch.Tensor], k: int, T: float) -> torch.Tensor:
    """1/(K-1) sum_{l != k} KL(p_l || p_k), the others detached."""
    return sum(kd_loss(logits[k], z, T) for l, z in enumerate(logits) if l != k) / (len(logits) - 1)


@METHODS.register("dml")
class DML(Method):
    needs_features = False
    needs_teacher = False

    def __init__(self, ctx: Context, peers: int = 1, T: float = 1.0):
        super().__init__(ctx)
        if peers < 1:
            raise KDError(f"dml: peers must be >= 1, got {peers}")
        self.T = T
        gen = own_generator()
        self.peers = nn.ModuleList(fresh_copy(ctx.student, gen) for _ in range(peers))

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        cohort = [step.s_logits] + [p(step.images) for p in self.peers]   # K x (B, classes)
        return {"kl": mimicry(cohort, 0, self.T),
                "peer_ce": sum(F.cross_entropy(z, step.targets) for z in cohort[1:]),
                "peer_kl": sum(mimicry(cohort, k, self.T) for k in range(1, len(cohort)))}
