"""Every distillation method, one file each; importing this package registers them in METHODS."""
from kd.methods import kd  # noqa: F401
