"""How a training step executes: eager, compiled, or compiled into CUDA graphs. Never what it computes.

The step (forward of student and teacher, the cell's loss, backward, optimizer step) is written once,
in `kd/engine/distiller.py`, without host synchronisation: metrics stay on the device, the epoch number reaches
the methods as a device tensor, the learning rate lives in the optimizer as a device tensor in the
compiled modes. That makes it capturable; this module only decides how to run it:

- ``eager``: plain PyTorch, op by op. The default on the CPU.
- ``compile``: ``torch.compile`` (Inductor) of the forward+loss and of ``optimizer.step``, any device,
  and of the frozen teacher's forward (`wrap_teacher`). Shapes are static (``dynamic=False``): one
  compilation for the full batch and one for the last, smaller batch (kept as it is: no padding, no
  dropped samples).
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
- channels_last (NHWC) for models and batches changes which kernels run, not the formulas; their
  rounding differs: on the CPU the eager channels_last step's gradients of the early (32x32) layers
  were measured 4e-4 to 1.5e-3 (relative) from a float64 step, NCHW eager 1e-6 to 1e-5 (kd doctor's
  equivalence therefore takes the NCHW eager step as its CPU reference).
- The frozen teacher's forward is compiled with Inductor's ``freezing``: its weights become constants,
  so eval-mode BatchNorm is folded into the convolutions (W g / sqrt(v + eps), exact in real
  arithmetic, float rounding in float32), weights are prepacked for the CPU's kernels and ReLUs fused.
  Its outputs move by rounding only (tests/test_execution.py); the result line says so (``teacher``).

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

    def record(self, device: torch.device, teacher: bool = True) -> dict:
        """What the result line says of the execution (`teacher`: whether the run has a teacher)."""
        rec = {"mode": self.mode, "channels_last": self.channels_last, "fallback": self.fallback}
        if self.compiled:
            rec["backend"] = self.backend
            if teacher:
                rec["teacher"] = "compiled, frozen" if self.backend == "inductor" else "compiled"
        if device.type == "cuda":
            rec.update(tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        return rec

    def wrap(self, fn: Callable) -> Callable:
        """`fn` as this mode runs it. A compiled process fails loudly past the compiler's recompile limit
        (`fail_on_recompile_limit_hit`) instead of running eagerly under a `compile`/`graph` label."""
        if not self.compiled:
            return fn
        _configure_compiler()
        if self.mode == "graph":
            return torch.compile(fn, mode="reduce-overhead", dynamic=False)
        return torch.compile(fn, backend=self.backend, dynamic=False)

    def wrap_teacher(self, fn: Callable) -> Callable:
        """The frozen teacher's forward (`Distiller.teacher_forward`) as this mode runs it: eager, or
        compiled with Inductor's freezing (module docstring). Never in CUDA graphs, even in graph mode:
        its outputs are read by the step that follows, after that step's `mark_step` (a graph's outputs
        are overwritten by its next replay). Measured on the 2-core CPU (resnet32x4, batch 64,
        channels_last): 9-13 % less time than eager for a teacher forward alone, 2-4 % of a KD step
        (README, Speed)."""
        if not self.compiled:
            return fn
        _configure_compiler()
        compiled = torch.compile(fn, backend=self.backend, dynamic=False)
        if self.backend != "inductor":
            return compiled
        import torch._inductor.config as inductor

        def frozen(*args):
            # Inductor freezes a graph compiled with grad off and `freezing` set when it compiles (the
            # first call); `options={"freezing": True}` of torch.compile is not read at that point.
            with torch.no_grad(), inductor.patch(freezing=True):
                return compiled(*args)
        return frozen

    def mark_step(self) -> None:
        """Once per training step, before its compiled calls: a new CUDA-graph generation (graph mode).
        Called once, not per compiled function: marking before the optimizer's step would free the
        gradients and loss that step is about to read."""
        if self.mode == "graph":
            torch.compiler.cudagraph_mark_step_begin()


def _configure_compiler() -> None:
    import torch._dynamo
    import torch._inductor.config as inductor
    inductor.fallback_random = True                 # same random draws as eager (CRD negatives)
    if _limit() < RECOMPILE_LIMIT:
        size_compiler(1)
    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        torch._dynamo.config.fail_on_recompile_limit_hit = True


# Each run compiles its own frames (its loss, its optimizer's step; one per batch shape and phase), and
# the compiler keeps them per code object until reset: the limit is sized to the runs that train at
# once, and the engine resets the compiler after every finished group (kd.engine.run).
RECOMPILE_LIMIT = 64
FRAMES_PER_RUN = 8                  # stages x 2 batch shapes, with room


def _limit_name() -> str:
    import torch._dynamo
    return "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.6


def _limit() -> int:
    import torch._dynamo
    return getattr(torch._dynamo.config, _limit_name())


def size_compiler(runs_at_once: int) -> None:
    """The recompile limit for `runs_at_once` runs compiled in one process between resets."""
    import torch._dynamo
    cfg = torch._dynamo.config
    limit = max(RECOMPILE_LIMIT, FRAMES_PER_RUN * runs_at_once)
    setattr(cfg, _limit_name(), limit)
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * limit)


def reset_compiler() -> None:
    """Drop every compiled frame (after a group's runs finished: their frames are never called again)."""
    import torch._dynamo
    torch._dynamo.reset()


def default_execution(device: torch.device) -> Execution:
    """The mode proven by the equivalence tests on the device type: eager on both the CPU (`compile`
    is 2-4 % faster per KD step there, results/speed/bench.jsonl, after seconds to minutes of
    compiling: worth it for long runs only) and CUDA, where `compile` and `graph` have not yet passed
    tests/test_execution.py's CUDA equivalence test on a GPU (run `kd doctor` there; the default
    changes only with a committed GPU measurement); channels_last on both (measured on the CPU:
    the KD step 1.17-1.18x RepDistiller's, results/speed/)."""
    return Execution("eager", channels_last=True)


def pick_device(device: torch.device | str | None = None) -> torch.device:
    """`device` as given, else CUDA when it is available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve(device: torch.device | str | None, mode: str | None = None, channels_last: bool | None = None) -> Execution:
    """The device's default (`device` None: pick_device's), with what the user set (--mode,
    --no-channels-last) in its place."""
    device = pick_device(device)
    d = default_execution(device)
    return Execution(mode or d.mode, d.channels_last if channels_last is None else channels_last).check(device)
