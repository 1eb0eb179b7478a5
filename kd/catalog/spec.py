"""A run as a value: a cell, its recipe with the overrides applied, a seed. Its id and the digest of
its configuration are computed here and nowhere else."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from kd.catalog.cells import Cell, Recipe, load_recipe
from kd.catalog.ids import cell_id

STATE_FORMAT = 1          # part of the digest: a change of the resume-state layout invalidates old states


@dataclass(frozen=True, eq=False)
class RunSpec:
    cell: Cell
    recipe: Recipe            # resolved: the cell's recipe with the overrides applied
    seed: int

    @classmethod
    def of(cls, cell: Cell, seed: int = 0, overrides: dict | None = None) -> "RunSpec":
        return cls(cell, load_recipe(cell.recipe).with_overrides(**(overrides or {})), seed)

    @property
    def id(self) -> str:
        """The cell id under the resolved recipe (overrides make another recipe id, never mixed)."""
        c = self.cell
        return cell_id(c.dataset, c.label, c.student, c.teacher, self.recipe.id)

    @property
    def key(self) -> tuple[str, int]:
        return self.id, self.seed

    def __eq__(self, other) -> bool:
        return isinstance(other, RunSpec) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def data_name(self) -> str:
        """The dataset as loaded: the cell's, with the recipe's training subset as a variant."""
        sub = self.recipe.overrides.get("subset")
        return self.cell.dataset + (f"-sub{sub}" if sub else "")

    @property
    def data_key(self) -> tuple:
        """Runs with equal keys read the same data (loaded once)."""
        return self.cell.dataset, self.recipe.overrides.get("subset"), self.recipe.data_seed

    @property
    def digest(self) -> str:
        """sha256 of the resolved configuration a run's numbers depend on: the cell (dataset and its
        variant, models, loss terms and weights), the recipe after overrides (epochs, batch, optimizer,
        schedule, data_seed, subset, amp...), the seed. Descriptive text (source, assumed, description,
        file) is left out: editing it changes no number. Stored with the resume state, checked on resume."""
        cell_d = {k: v for k, v in asdict(self.cell).items() if k not in ("assumed", "source", "file")}
        recipe_d = {k: v for k, v in asdict(self.recipe).items() if k not in ("description", "source", "assumed")}
        payload = {"format": STATE_FORMAT, "cell": cell_d, "recipe": recipe_d, "seed": self.seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def teacher_specs(self) -> list["RunSpec"]:
        """The teacher runs this run may use, preferred first: the full-protocol teacher when the
        recipe has overrides (a quick check uses it when it is stored), then the teacher under the same
        overrides; seed recipe.teacher_seed. Empty without a teacher."""
        tcell = self.cell.teacher_cell(self.recipe)
        if tcell is None:
            return []
        full = load_recipe(tcell.recipe)
        same = full.with_overrides(**self.recipe.overrides)
        tries = [same] + ([full] if self.recipe.overrides else [])
        return [RunSpec(tcell, r, self.recipe.teacher_seed) for r in tries]
