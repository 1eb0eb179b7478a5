"""A Slurm task (kd.commands.slurm.CellRun) that is preempted once at a known point: right after its run
saved the resume state of its first epoch, the task sends itself the signal Slurm sends before a
preemption (SIGUSR2, submitit's). Nothing races the job's end: the signal arrives while the run is
certainly unfinished, whatever the machine's load.

The job processes of submitit's local executor unpickle the task, so this module must be importable
there (tests/ on their PYTHONPATH). CellRun.checkpoint() resubmits a plain CellRun: the requeued job
runs undisturbed and resumes from the saved state."""
from __future__ import annotations

import os
import signal
import time

from kd.commands.slurm import CellRun


class PreemptedOnce(CellRun):
    CELL = "digits-sub400/kd/tiny_s_from_tiny_t/digits"      # the one cell preempted; others run plainly

    def __call__(self):
        if self.cell == self.CELL:
            import kd.engine.member as member
            save_state = member.save_state

            def save_then_preempt(*args, **kwargs):
                save_state(*args, **kwargs)
                member.save_state = save_state                  # once
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(600)                                 # submitit's handler requeues and exits here
            member.save_state = save_then_preempt
        return super().__call__()

    def checkpoint(self, *args, **kwargs):
        """The requeued job is a plain CellRun (CellRun.checkpoint would resubmit this class, preempted again)."""
        import submitit
        return submitit.helpers.DelayedSubmission(CellRun(**vars(self)))
