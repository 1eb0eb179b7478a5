"""How a training step executes: eager, compiled, or compiled into CUDA graphs. Never what it computes.

The step (forward of student and teacher, the cell's loss, backward, optimizer step) is written once,
in `kd/engine/distiller.py`, without host synchronisation: metrics stay on the device, the epoch number reaches
the methods as a device tensor, the learning rate lives in the optimizer as a device tensor in the
compiled modes. That makes it capturable; this module only decides how to run it:

- ``eager``: plain PyTorch, op by op. The default on the CPU.
- ``compile``: ``torch.compile`` (Inductor) of the forward+loss and of ``optimizer.step``, any device.
  Shapes are static (``dynamic=False``): one compilation for the full batch and one for the last,
  smaller batch (kept as it is: no padding, no dropped samples).
- ``graph``: the same with ``mode="reduce-overhead"``: Inductor's CUDA graphs (CUDAGraph Trees, one
  record per batch shape) replay the whole step without per-kernel launches. CUDA only; the default
  on CUDA.

Conventions that can move the last bits of a number, all recorded in the result line (`record`):
- Random draws inside a compiled step (CRD's negatives) use PyTorch's eager generators
  (``torch._inductor.config.fallback_random = True``), so every mode draws the same negatives.
- Inductor may fuse and reorder float reductions: compiled parameters match eager ones to float
  rounding, not bit for bit (tests/test_execution.py states the tolerance).
- TF32 for convolutions is PyTorch's default on CUDA (``torch.backends.cudnn.allow_tf32``); it is
  recorded, never changed here. bf16 autocast is not an execution setting: it belongs to the recipe
  (``amp: true`` or the override ``precision=bf16``), so its results carry another recipe id.
- channels_last (NHWC) for models and batches changes which convolution kernels run, not the math.

A method that cannot be captured (it needs a host decision per step, e.g. BSS's variable attacked
set) sets ``capturable = False``; its cells run eagerly, announced once and recorded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kd.errors import KDError

MODES = ("eager", "compile", "graph")


@dataclass(frozen=True)
class Execution:
    mode: str = "eager"
    channels_last: bool = False
    fallback: str | None = None         # why a requested compiled mode runs eagerly (announced, recorded)
    backend: str = "inductor"           # torch.compile backend; "aot_eager" traces and differentiates the
                                        # same graphs without generating kernels (fast to compile, tests)

    @property
    def compiled(self) -> bool:
        return self.mode != "eager"

    def check(self, device: torch.device) -> "Execution":
        if self.mode not in MODES:
            raise KDError(f"unknown execution mode '{self.mode}'; valid: {', '.join(MODES)}")
        if self.mode == "graph" and device.type != "cuda":
            raise KDError(f"execution mode 'graph' needs a CUDA device (got {device}); use --mode compile or eager")
        return self

    def for_methods(self, methods, log=print) -> "Execution":
        """Eager, announced, when a method of the cell cannot be captured."""
        bad = [type(m).__name__ for m in methods if not getattr(m, "capturable", True)]
        if not bad:
            return self
        return self.fall_back(f"{', '.join(bad)} cannot be captured (a host decision per step)", log)

    def fall_back(self, why: str, log=print) -> "Execution":
        """Eager instead of a compiled mode, announced once and recorded (`fallback`); itself if eager."""
        if not self.compiled:
            return self
        log(f"execution mode '{self.mode}' requested: {why}; running eagerly")
        return Execution("eager", self.channels_last, fallback=f"{self.mode} -> eager: {why}; running eagerly",
                         backend=self.backend)

    def record(self, device: torch.device) -> dict:
        rec = {"mode": self.mode, "channels_last": self.channels_last, "fallback": self.fallback}
        if self.compiled:
            rec["backend"] = self.backend
        if device.type == "cuda":
            rec.update(tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        return rec

    def wrap(self, fn: Callable) -> Callable:
        """`fn` as this mode runs it."""
        if not self.compiled:
            return fn
        import torch._dynamo
        import torch._inductor.config as inductor
        inductor.fallback_random = True                 # same random draws as eager (CRD negatives)
        cfg = torch._dynamo.config
        if hasattr(cfg, "recompile_limit"):
            cfg.recompile_limit = max(cfg.recompile_limit, 64)   # stages x 2 batch shapes x epochs tensors
        else:                                                     # torch < 2.6
            cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
        if self.mode == "graph":
            compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)
        else:
            compiled = torch.compile(fn, backend=self.backend, dynamic=False)
        if self.mode != "graph":
            return compiled

        def graphed(*args):
            torch.compiler.cudagraph_mark_step_begin()     # each call is a new training iteration
            return compiled(*args)
        return graphed


def default_execution(device: torch.device) -> Execution:
    """The fastest mode that passes the equivalence tests: CUDA graphs on CUDA, eager on the CPU
    (compiling costs minutes there and gains little); channels_last on both (measured on the CPU:
    1.18-1.22x for the KD step, results/speed/)."""
    return Execution("graph" if device.type == "cuda" else "eager", channels_last=True)


def resolve(device: torch.device, mode: str | None = None, channels_last: bool | None = None) -> Execution:
    """The device's default, with what the user set (--mode, --no-channels-last) in its place."""
    d = default_execution(device)
    return Execution(mode or d.mode, d.channels_last if channels_last is None else channels_last).check(device)
