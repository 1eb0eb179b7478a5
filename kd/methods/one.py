"""ONE: Lan, Zhu, Gong. "Knowledge Distillation by On-the-Fly Native Ensemble". NeurIPS 2018, arXiv:1806.04606.

Online distillation without a teacher: the student's low-level layers are shared by m branches (each
a copy of the last stage + classifier); a gate on the shared features weights the branch logits into
the ensemble teacher z_e = sum_i g_i z_i (eq. 2), and the loss (eq. 5) is
sum_i CE(z_i) + CE(z_e) + T^2 sum_i KL(p_e^T || p_i^T). Reference implementation followed:
Lan1991Xu/ONE_NeurIPS2018 (models/cifar/resnet.py ONE_ResNet, cifar_one.py, loss/kl_loss.py).

Convention: branch 0 is the student's own last stage and classifier (its CE is the loop's
ce_weight * CE, so use ce_weight 1 and weight 1); the method owns branches 1..m-1 (copies of the
student's last stage + classifier, independently redrawn as dml.fresh_copy) and the gate, reading the
shared features from step.s_feats[-3] (the last stage's input: ONE reads plain features, which the
loop hands it even in a cell with a preact method). Gate as in the reference code: global average pool -> Linear -> BatchNorm1d -> ReLU ->
softmax (`gate_bn=False`: Linear -> softmax, the paper's eq. 1). KL: batchmean x T^2 (T = 3), the
ensemble detached; like the reference code the KL sum is multiplied by the sigmoid ramp-up
exp(-5 (1 - min(epoch/rampup_epochs, 1))^2) (rampup_epochs 80; 0 gives the paper's constant 1).
Evaluated model: branch 0, the student itself (the single-student tables); `eval='ensemble'` makes
eval_logits return the gated ensemble instead. Supported students: CIFAR ResNets, WRNs, tiny nets.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from kd.errors import KDError
from kd.methods.contract import Context, Method, Step
from kd.methods.dml import fresh_copy, own_generator
from kd.methods.kd import kd_loss
from kd.models.resnet import CifarResNet
from kd.models.tiny import TinyNet
from kd.models.wrn import WideResNet
from kd.registry import METHODS


def _gap(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


# per architecture: the modules that map feats[-3] to the logits, and how a branch applies them
_LAST_STAGE = {
    CifarResNet: (("layer3", "fc"), lambda m, x: m["fc"](_gap(m["layer3"](x)[0]))),
    WideResNet: (("block3", "bn1", "fc"), lambda m, x: m["fc"](_gap(F.relu(m["bn1"](m["block3"](x)))))),
    TinyNet: (("stage3", "fc"), lambda m, x: m["fc"](_gap(F.relu(m["stage3"](x))))),
}


def last_stage(student: nn.Module):
    for cls, spec in _LAST_STAGE.items():
        if isinstance(student, cls):
            return spec
    raise KDError(f"one: no branch accessor for student {type(student).__name__}; "
                  f"supported: {', '.join(c.__name__ for c in _LAST_STAGE)}")


@METHODS.register("one")
class ONE(Method):
    needs_teacher = False

    def __init__(self, ctx: Context, branches: int = 3, T: float = 3.0, rampup_epochs: float = 80,
                 gate_bn: bool = True, eval: str = "student"):
        super().__init__(ctx)
        names, self._run_branch = last_stage(ctx.student)
        if branches < 2 or eval not in ("student", "ensemble"):
            raise KDError(f"one: need branches >= 2 and eval in student/ensemble, got {branches}, {eval!r}")
        self.T, self.rampup, self.eval_what = T, rampup_epochs, eval
        gen = own_generator()
        self.branches = nn.ModuleList(
            nn.ModuleDict({n: fresh_copy(getattr(ctx.student, n), gen) for n in names}) for _ in range(branches - 1))
        c = ctx.s_shapes[-3][1]
        self.gate = nn.Sequential(nn.Linear(c, branches), *([nn.BatchNorm1d(branches), nn.ReLU()] if gate_bn else []))

    def ensemble(self, shared: torch.Tensor, s_logits: torch.Tensor):
        """shared (B, C, H, W), branch-0 logits (B, K) -> branch logits (m, B, K), gate (B, m), ensemble (B, K)."""
        z = torch.stack([s_logits] + [self._run_branch(b, shared) for b in self.branches])
        g = F.softmax(self.gate(_gap(shared)).float(), dim=1)
        return z, g, torch.einsum("bm,mbk->bk", g.to(z.dtype), z)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        z, _, ens = self.ensemble(step.s_feats[-3], step.s_logits)
        w = 1.0 if self.rampup <= 0 else torch.exp(       # on the device: no host sync per step
            -5.0 * (1.0 - torch.clamp(torch.as_tensor(step.epoch, dtype=torch.float32) / self.rampup, max=1.0)) ** 2)
        return {"branch_ce": sum(F.cross_entropy(zi, step.targets) for zi in z[1:]),
                "ensemble_ce": F.cross_entropy(ens, step.targets),
                "kl": w * sum(kd_loss(zi, ens, self.T) for zi in z)}

    @torch.no_grad()
    def eval_logits(self, images: torch.Tensor, student: nn.Module) -> torch.Tensor | None:
        if self.eval_what != "ensemble":
            return None
        was = self.training
        self.train(False)  # the loop only switches the student to eval
        feats, logits = student.extract(images)
        ens = self.ensemble(feats[-3], logits)[2]
        self.train(was)
        return ens
