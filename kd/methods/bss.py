"""BSS: Heo, Lee, Yun, Choi. "Knowledge Distillation with Adversarial Samples Supporting Decision
Boundary". AAAI 2019, arXiv:1805.05532.

Implements the paper's loss without CE: ratio(e) * H(p_t^T, p_s^T) on the clean batch plus
ratio_bss(e) * H(p_t^T(x_adv), p_s^T(x_adv)) on boundary-supporting samples x_adv, H the soft-target
cross-entropy at T = 3. Follows bhheo/BSS_distillation `train_BSS_distillation.py` and
`attacks/attack_BSS.py` step by step:
- attacked samples: those both teacher and student classify correctly (argmax == label); if more
  than `attack_size` (64), the 64 with the largest sum_{c != y} (softmax_t - softmax_s)^2 (T = 1);
- target class: sampled among the teacher's classes ranked 2nd.. with probability proportional to
  the teacher's softmax (T = 1);
- attack on the teacher (eval mode): `num_steps` (10) steps x <- x + a (m + 1e-4) g / ||g||_2, with m =
  z_orig - z_target the margin between the teacher's original top class and the target class,
  g = d(z_target - z_orig)/dx, a = `step_alpha` (0.3) while the teacher still predicts the original
  class and 0 once it changed; x clamped to [-2.5, 2.5] (normalised-pixel space) after each step.
  The reference's max_epsilon = 16 is computed but never applied there, so no eps-ball here;
- schedules with e = step.epoch + 1 (1-based as the reference) and E = ctx.epochs:
  ratio = max(3 (1 - e/E), 0) + 1, ratio_bss = max(2 (1 - 4e/(3E)), 0); no attack once ratio_bss = 0.

Convention: returns {'kd': ..., 'bss': ...} with the schedule weights inside; each H is summed over
classes and averaged over its samples (clean batch / attacked samples), no T² factor, teacher
probabilities detached, as the reference (the gradient norm is clamped at 1e-12, ours). Cell: ce_weight 1 (the reference adds plain CE) and bss
weight 1 (no separate kd term). The reference's own recipe: 80 epochs, bs 256, lr 0.1 (x0.1 at
E/2, 3E/4), wd 1e-4. The selection needs one host sync per step (variable attacked-set size, as in
the reference, so the student's BatchNorm sees exactly the attacked samples): `capturable = False`,
its cells run eagerly in every execution mode (kd/engine/execution.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def soft_ce(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    return -(F.softmax(t_logits.detach() / T, 1) * F.log_softmax(s_logits / T, 1)).sum(1).mean()


@METHODS.register("bss")
class BSS(Method):
    needs_features = False
    capturable = False

    def __init__(self, ctx: Context, T: float = 3.0, attack_size: int = 64, num_steps: int = 10,
                 step_alpha: float = 0.3, clamp: float = 2.5, kd_ratio: float = 3.0, bss_ratio: float = 2.0):
        super().__init__(ctx)
        self.T, self.attack_size, self.num_steps, self.step_alpha = T, attack_size, num_steps, step_alpha
        self.clamp, self.kd_ratio, self.bss_ratio, self.epochs = clamp, kd_ratio, bss_ratio, ctx.epochs

    def ratios(self, epoch: int) -> tuple[float, float]:
        e, E = epoch + 1, self.epochs
        return max(self.kd_ratio * (1 - e / E), 0) + 1, max(self.bss_ratio * (1 - 4 / 3 * e / E), 0)

    def attack(self, teacher, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Targeted attack on the teacher toward `target` (B,), the reference's AttackBSS.run."""
        x_adv, orig = x.detach(), None
        for _ in range(self.num_steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                z = teacher(x_adv)                                # (B, K)
                orig = z.argmax(1) if orig is None else orig      # fixed at the first step
                z_o, z_c = z.gather(1, orig[:, None]), z.gather(1, target[:, None])   # (B, 1)
                g, = torch.autograd.grad((z_c - z_o).sum(), x_adv)
            alpha = self.step_alpha * (z.argmax(1) == orig).to(x.dtype).view(-1, 1, 1, 1)
            margin = (z_o - z_c).detach().view(-1, 1, 1, 1)
            norm = g.pow(2).flatten(1).sum(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
            x_adv = (x_adv.detach() + alpha * (margin + 1e-4) * g / norm).clamp(-self.clamp, self.clamp)
        return x_adv.detach()

    def select(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the attacked samples and their target classes."""
        s, t, y = step.s_logits.detach(), step.t_logits.detach(), step.targets
        idx = ((t.argmax(1) == y) & (s.argmax(1) == y)).nonzero().squeeze(1)   # host sync
        if idx.numel() > self.attack_size:
            diff = (F.softmax(t[idx], 1) - F.softmax(s[idx], 1)).pow(2)
            score = diff.sum(1) - diff.gather(1, y[idx, None]).squeeze(1)
            idx = idx[score.argsort(descending=True)[:self.attack_size]]
        p, cls = F.softmax(t[idx], 1).sort(1, descending=True)
        p, cls = p[:, 1:], cls[:, 1:]                             # drop the teacher's top class
        u = torch.rand(len(idx), 1, device=t.device, dtype=p.dtype) * p.sum(1, keepdim=True)
        k = (p.cumsum(1) < u).sum(1).clamp(max=p.shape[1] - 1)   # first c with cumsum >= u
        return idx, cls.gather(1, k[:, None]).squeeze(1)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        ratio, ratio_bss = self.ratios(int(step.epoch))           # host sync: BSS is not capturable
        out = {"kd": ratio * soft_ce(step.s_logits, step.t_logits, self.T),
               "bss": step.s_logits.new_zeros(())}
        if ratio_bss > 0:
            idx, target = self.select(step)
            if idx.numel() > 0:
                x_adv = self.attack(step.teacher, step.images[idx], target)
                with torch.no_grad():
                    t_adv = step.teacher(x_adv)
                out["bss"] = ratio_bss * soft_ce(step.student(x_adv), t_adv, self.T)
        return out
