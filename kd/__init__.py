"""kd: a knowledge-distillation benchmark suite."""

__version__ = "0.1.0"
