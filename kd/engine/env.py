"""The settings every run of one command shares: where data, checkpoints and results live, the
device and how the step executes, and how progress is shown."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from kd.engine.execution import Execution, default_execution
from kd.records.store import store_root


@dataclass(frozen=True)
class Env:
    data_root: str | Path | None = None
    store: str | Path | None = None           # None: $KD_STORE or ./checkpoints
    results: str | Path | None = None         # None: $KD_RESULTS or ./results/local
    device: torch.device | str | None = None  # None: cuda when available (this rank's under torchrun)
    execution: Execution | None = None        # None: the device's default
    progress: bool = True
    log: Callable = field(default=print, compare=False)

    def resolved(self, device: torch.device) -> "Env":
        """Store path, device and execution filled in (the execution checked against the device)."""
        return replace(self, store=store_root(self.store), device=device,
                       execution=(self.execution or default_execution(device)).check(device))

    def quiet(self) -> "Env":
        return replace(self, progress=False, log=lambda *a, **k: None)
