"""Name -> factory registries for models, methods and datasets (timm-style, strict).

Registering a name twice raises: in a benchmark a silent overwrite is a wrong number.
An unknown name raises a KDError that lists the valid ones.
"""
from __future__ import annotations

from kd.errors import KDError


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, **facts):
        """Register under `name`; `facts` (e.g. a dataset's `classes`) become attributes of the object,
        readable without building it (kd.catalog.names reads the same calls without importing torch)."""
        def deco(obj):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            for k, v in facts.items():
                setattr(obj, k, v)
            self[name] = obj
            return obj
        return deco

    def get(self, name: str):  # type: ignore[override]
        if name not in self:
            raise KDError(f"unknown {self.kind} '{name}'; valid {self.kind}s: {', '.join(sorted(self))}")
        return self[name]


MODELS = Registry("model")
METHODS = Registry("method")
DATASETS = Registry("dataset")
