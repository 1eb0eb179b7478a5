"""CRD: Tian, Krishnan, Isola. "Contrastive Representation Distillation". ICLR 2020, arXiv:1910.10699.

Embeddings g_s, g_t (linear + L2 normalisation, feat_dim 128) of the pooled features feat[-1];
memory banks M_s, M_t (num_train x 128) of past embeddings. For each sample i (positive: the same
index in the other network's bank) and K negatives j: h = exp(<M[j], g(x_i)> / tau) / Z, with Z
fixed on the first batch to mean(h) * N; NCE loss (eq. 18 with noise P_n = 1/N, m = K):
L = -1/B sum_i [ log(h_i0 / (h_i0 + K/N + eps)) + sum_j log((K/N) / (h_ij + K/N + eps)) ],
computed for the student anchor against M_t and the teacher anchor against M_s, and summed.
Banks are updated after scoring: M[i] <- normalize(m M[i] + (1 - m) g(x_i)), momentum m = 0.5.
Follows HobbitLong/RepDistiller `crd/criterion.py` (CRDLoss, ContrastLoss, Embed), `crd/memory.py`
(ContrastMemory: uniform(-1/sqrt(d/3), 1/sqrt(d/3)) init, Z on the first batch) and
`dataset/cifar100.py` (CIFAR100InstanceSample, mode 'exact': negatives drawn from the other classes).

Convention: as RepDistiller: cell weight 0.8 (`-a 0 -b 0.8`; CRD+KD adds kd weight 1). Negatives are
drawn on the input's device, uniformly without replacement among samples of other classes (random
keys + top-K), never the positive. The sample labels come lazily from step.targets at step.index (a
Context has no labels): before a sample is first seen its label is unknown and it counts as "other
class", so only the first epoch can draw a few same-class negatives. K is capped at N - 1; when K
exceeds the other-class count, same-class samples fill the rest (RepDistiller repeats other-class
ones). The sampling costs O(B N) memory per step (fine for CIFAR; heavy for ImageNet-size N).
The contrast part runs in float32 outside autocast; embeddings stored in the banks are detached.

Several processes (kd.engine.dist): each rank holds its slice of the global batch, but the banks,
the labels seen and Z are those of one process. The ranks gather indices, labels and embeddings in
rank order before sampling and updating, draw the global batch's negatives once (every rank draws
the same keys: same generator state) and keep their own rows, and Z is the global mean of the first
batch's scores. So every rank's banks equal the one-process banks (tests/test_dist.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.engine import dist
from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS

EPS = 1e-7


def nce_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """x: (B, K+1) normalised scores, column 0 the positive."""
    m_pn = (x.shape[1] - 1) / n_data                                  # K * P_n
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m_pn + EPS))
    log_d0 = torch.log(m_pn / (x[:, 1:] + m_pn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


@METHODS.register("crd")
class CRD(Method):
    def __init__(self, ctx: Context, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5, layer: int = -1):
        super().__init__(ctx)
        n = ctx.num_train
        self.embed_s = nn.Linear(ctx.s_shapes[layer][1], feat_dim)
        self.embed_t = nn.Linear(ctx.t_shapes[layer][1], feat_dim)
        self.n, self.k, self.t, self.m, self.layer = n, min(nce_k, n - 1), nce_t, nce_m, layer
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, feat_dim) * 2 * stdv - stdv)   # (N, d) student
        self.register_buffer("memory_t", torch.rand(n, feat_dim) * 2 * stdv - stdv)   # (N, d) teacher
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))         # -1: not seen yet
        self.register_buffer("z", torch.full((2,), -1.0))                              # Z_s, Z_t; -1 unset

    def sample(self, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B,) indices and labels -> (B, K+1) contrast indices, column 0 the positive (this rank's rows
        of the global batch's draw under several processes)."""
        (g_index, rows), (g_targets, _) = dist.gather(index), dist.gather(targets)
        self.labels[g_index] = g_targets
        keys = torch.rand(g_index.shape[0], self.n, device=index.device)            # (B, N)
        keys = keys.masked_fill(self.labels[None, :] == g_targets[:, None], -1.0)   # same class: last
        keys.scatter_(1, g_index[:, None], -2.0)                                    # positive: never
        neg = keys.topk(self.k, dim=1).indices[rows]                                # (B, K)
        return torch.cat([index[:, None], neg], dim=1)

    def _scores(self, memory: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, which: int) -> torch.Tensor:
        w = memory[idx].detach()                                      # (B, K+1, d)
        out = torch.exp(torch.bmm(w, v[:, :, None]).squeeze(2) / self.t)   # (B, K+1)
        if dist.world().size > 1:                                     # the global batch's mean
            total = dist.all_sum(torch.stack([out.detach().sum(), torch.tensor(float(out.numel()), device=out.device)]))
            first = total[0] / total[1] * self.n
        else:
            first = out.detach().mean() * self.n
        z = torch.where(self.z[which] < 0, first, self.z[which])
        self.z[which] = z                                             # fixed after the first batch
        return out / z

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, v: torch.Tensor, index: torch.Tensor):
        (v, _), (index, _) = dist.gather(v.detach()), dist.gather(index)      # every rank: the global batch
        new = memory[index] * self.m + v * (1 - self.m)
        memory.index_copy_(0, index, new / new.norm(dim=1, keepdim=True))

    def forward(self, step: Step) -> torch.Tensor:
        with torch.autocast(step.s_logits.device.type, enabled=False):
            v_s = F.normalize(self.embed_s(step.s_feats[self.layer].flatten(1).float()), dim=1)  # (B, d)
            v_t = F.normalize(self.embed_t(step.t_feats[self.layer].flatten(1).float().detach()), dim=1)
            idx = self.sample(step.index, step.targets)               # (B, K+1)
            out_s = self._scores(self.memory_t, v_s, idx, 0)          # student anchor vs teacher bank
            out_t = self._scores(self.memory_s, v_t, idx, 1)          # teacher anchor vs student bank
            self._update(self.memory_s, v_s, step.index)
            self._update(self.memory_t, v_t, step.index)
            return nce_loss(out_s, self.n) + nce_loss(out_t, self.n)
