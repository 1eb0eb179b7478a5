"""DeiT distillation: Touvron, Cord, Douze, Massa, Sablayrolles, Jégou. "Training data-efficient image
transformers & distillation through attention". ICML 2021, arXiv:2012.12877.

Follows facebookresearch/deit `losses.py` (DistillationLoss): the student's distillation token has
its own head; its logits z_d are trained against the teacher logits z_t:
  deit_hard: CE(z_d, argmax_k z_t)                          (the paper's hard-label distillation)
  deit_soft: KL(softmax(z_t/T) || softmax(z_d/T)) * T^2 / numel(z_d)
             = F.kl_div(log_softmax(z_d/T), log_softmax(z_t/T), reduction='sum', log_target=True)
               * T * T / z_d.numel()      (exactly DeiT's code: the sum over batch AND classes is
             divided by B*K, the "legacy PyTorch" mean, so it is K times smaller than kd's batchmean)
DeiT combines them as (1 - alpha) * CE(z_cls, y) + alpha * distillation: the cell carries alpha as
ce_weight = 1 - alpha and the term's weight = alpha; the loop's CE reads the class-token logits
(a distilled DeiT student's training-mode logits, see kd.models.torchvision_timm). DeiT's hard setting is
alpha = 0.5 (main.py --distillation-alpha default); for soft distillation the paper uses T = 3.0,
lambda = 0.1 (recalled from the paper, not re-read here; main.py's --distillation-tau default is
1.0): the T default here is 3.0. DeiT's base
criterion also uses label smoothing / mixup targets: that is the loop's and recipe's business, not
this term's. The optional label_smoothing of deit_hard is off by default, as in DeiT's code.

Where z_d comes from: needs_features is True, so the loop calls student.extract(x) once; a model
with a distillation token exposes `dist_logits(feats)` (the distillation head applied to the
distillation token of those feats), so z_d belongs to the very forward that produced the class
logits. A student without one (a CNN, or deit_*_nodist) falls back to its class logits: DeiT's
"hard distillation with the class token only" rows; DeiT's own code raises instead. Teacher logits
are detached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def student_dist_logits(step: Step) -> torch.Tensor:
    """The distillation-token logits of this step's student forward, else its class logits."""
    fn = getattr(step.student, "dist_logits", None)
    return fn(step.s_feats) if fn is not None else step.s_logits


def deit_hard_loss(z_d: torch.Tensor, z_t: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(z_d, z_t.detach().argmax(dim=1), label_smoothing=label_smoothing)


def deit_soft_loss(z_d: torch.Tensor, z_t: torch.Tensor, T: float) -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(z_d / T, dim=1), F.log_softmax(z_t.detach() / T, dim=1),
                  reduction="sum", log_target=True)
    return kl * (T * T) / z_d.numel()


@METHODS.register("deit_hard")
class DeiTHard(Method):
    def __init__(self, ctx: Context, label_smoothing: float = 0.0):
        super().__init__(ctx)
        self.label_smoothing = label_smoothing

    def forward(self, step: Step) -> torch.Tensor:
        return deit_hard_loss(student_dist_logits(step), step.t_logits, self.label_smoothing)


@METHODS.register("deit_soft")
class DeiTSoft(Method):
    def __init__(self, ctx: Context, T: float = 3.0):
        super().__init__(ctx)
        self.T = T

    def forward(self, step: Step) -> torch.Tensor:
        return deit_soft_loss(student_dist_logits(step), step.t_logits, self.T)
