"""Cells and recipes as YAML data (benchmarks/).

A *recipe* (benchmarks/recipes/<name>.yaml) is a training protocol: epochs, batch, optimizer, LR
schedule. A *cell* is dataset (+variant) x teacher/student x method(s) x recipe; its id comes from
kd.ids.cell_id. Cell files (benchmarks/**/*.yaml, except recipes/) list a grid:

    dataset: cifar100
    recipe: crd
    methods:                     # label -> loss: ce_weight * CE + sum(weight * term)
      kd: {ce_weight: 0.1, terms: [{name: kd, weight: 0.9, T: 4}]}
    pairs: [[resnet32x4, resnet8x4], ...]      # [teacher, student]
    models: [resnet8x4, ...]                   # teacher-less cells (baseline, online methods)
    pair_params: {resnet8x4_from_resnet32x4: {dkd: {beta: 8}}}   # per-pair term overrides
    assumed: ["..."]             # facts the protocol does not give, chosen here; shown in reports
    source: "..."

The teacher of every cell is itself a cell (label 'baseline', the teacher recipe); it is added
automatically when no file defines it. YAML is read with yaml.safe_load; unknown keys, unknown
names and duplicate ids are errors.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from kd.errors import KDError
from kd.ids import cell_id

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise KDError(f"{path}:{mark.line + 1}: malformed YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise KDError(f"{path}: malformed YAML: {e}") from None
    except OSError as e:
        raise KDError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise KDError(f"{path}: expected a mapping at the top level")
    return data


def _build(cls, data: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KDError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise KDError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple = ()
    gamma: float = 0.1
    schedule: str = "multistep"          # multistep | cosine
    optimizer: str = "sgd"               # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_by_student: dict = field(default_factory=dict)   # student name -> lr (RepDistiller: 0.01 for MobileNet/ShuffleNet)
    teacher_recipe: str | None = None    # None: the same recipe
    teacher_seed: int = 0                # which seed's teacher checkpoint the students use
    data_seed: int = 0                   # seed of dataset variants (noise, imbalance, subset)
    amp: bool = False                    # bf16 autocast on CUDA
    sync_bn: bool = False                # multi-GPU (kd.dist): SyncBatchNorm instead of per-rank BatchNorm
    lr_scaling: str = "none"             # LR rule for the global batch: none | linear (see lr_factor)
    lr_reference_batch: int | None = None   # the batch the recipe's lr is for (needed by linear)
    description: str = ""
    source: str = ""
    assumed: tuple = ()
    overrides: dict = field(default_factory=dict)      # set by with_overrides; part of the id

    def __post_init__(self):
        if self.lr_scaling not in ("none", "linear"):
            raise KDError(f"recipe {self.name}: lr_scaling must be none or linear, got {self.lr_scaling!r}")
        if self.lr_scaling == "linear" and not (isinstance(self.lr_reference_batch, int) and self.lr_reference_batch > 0):
            raise KDError(f"recipe {self.name}: lr_scaling linear needs lr_reference_batch (the batch its lr is for)")

    @property
    def lr_factor(self) -> float:
        """The LR rule for the global batch, explicit in the recipe and recorded with every result:
        'none' keeps the lr whatever the batch and the number of GPUs (RepDistiller, CRD, DKD: one
        GPU; torchdistill without -adjust_lr); 'linear' multiplies it by batch_size /
        lr_reference_batch (Goyal et al. 2017, torchdistill's -adjust_lr for its per-GPU batch).
        The global batch is batch_size, whatever the world size, so more GPUs alone never change it.
        It scales the main training LR (lr, lr_by_student), not a method's own pre-training stage LR."""
        if self.lr_scaling == "linear":
            return self.batch_size / self.lr_reference_batch
        return 1.0

    @property
    def id(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + "~" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))

    def lr_for(self, student: str) -> float:
        return float(self.lr_by_student.get(student, self.lr)) * self.lr_factor

    def with_overrides(self, **ov) -> "Recipe":
        """Quick-check overrides (epochs, batch_size, lr, subset). Changing epochs scales the LR
        milestones proportionally. The result carries a different id, so it never mixes with
        full-protocol results."""
        ov = {k: v for k, v in ov.items() if v is not None}
        if not ov:
            return self
        bad = set(ov) - {"epochs", "batch_size", "lr", "subset"}
        if bad:
            raise KDError(f"unknown override(s) {', '.join(sorted(bad))}; valid: epochs, batch_size, lr, subset")
        changes = {k: v for k, v in ov.items() if k != "subset"}
        if "epochs" in ov:
            changes["milestones"] = tuple(max(1, round(m * ov["epochs"] / self.epochs)) for m in self.milestones)
        if "lr" in ov:
            changes["lr_by_student"] = {}
        return replace(self, **changes, overrides={**self.overrides, **ov})


@dataclass(frozen=True)
class Cell:
    dataset: str
    label: str
    student: str
    teacher: str | None
    recipe: str
    ce_weight: float = 1.0
    terms: tuple = ()                    # ({'name': 'kd', 'weight': 0.9, 'T': 4}, ...)
    assumed: tuple = ()
    source: str = ""
    file: str = ""

    @property
    def id(self) -> str:
        return cell_id(self.dataset, self.label, self.student, self.teacher, self.recipe)

    def teacher_cell(self, recipe: Recipe) -> "Cell | None":
        if not self.teacher:
            return None
        return Cell(self.dataset, "baseline", self.teacher, None, recipe.teacher_recipe or recipe.name,
                    assumed=self.assumed, source=f"teacher of {self.id}", file=self.file)

    def to_dict(self) -> dict:
        return asdict(self)


def load_recipe(name: str, root: Path = BENCHMARKS) -> Recipe:
    base = name.split("~")[0]
    path = root / "recipes" / f"{base}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (root / "recipes").glob("*.yaml"))
        raise KDError(f"unknown recipe '{base}'; valid recipes: {', '.join(valid)}")
    data = read_yaml(path)
    data.setdefault("name", base)
    for k in ("milestones", "assumed"):
        if k in data:
            data[k] = tuple(data[k])
    return _build(Recipe, data, str(path))


_GRID_KEYS = {"dataset", "recipe", "methods", "pairs", "models", "pair_params", "assumed", "source", "table", "note"}
_NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")


def _cells_from_file(path: Path, root: Path) -> list[Cell]:
    d = read_yaml(path)
    unknown = set(d) - _GRID_KEYS
    if unknown:
        raise KDError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_GRID_KEYS))}")
    for k in ("dataset", "recipe", "methods"):
        if k not in d:
            raise KDError(f"{path}: missing key '{k}'")
    pairs = [(t, s) for t, s in d.get("pairs") or []] + [(None, m) for m in d.get("models") or []]
    if not pairs:
        raise KDError(f"{path}: no 'pairs' or 'models' listed")
    out = []
    for label, spec in d["methods"].items():
        spec = spec or {}
        bad = set(spec) - {"ce_weight", "terms", "teacherless"}
        if bad:
            raise KDError(f"{path}: method '{label}': unknown key(s) {', '.join(sorted(bad))}; valid: ce_weight, terms, teacherless")
        teacherless = label == "baseline" or bool(spec.get("teacherless"))
        mine = [(t, s) for t, s in pairs if (t is None) == teacherless]
        if not mine:
            raise KDError(f"{path}: method '{label}' has no cells: methods with a teacher run on 'pairs', "
                          f"baseline and teacherless methods on 'models'")
        for teacher, student in mine:
            key = f"{student}_from_{teacher}" if teacher else student
            per_pair = (d.get("pair_params") or {}).get(key, {})
            terms = tuple({**t, **per_pair.get(t["name"], {})} for t in spec.get("terms") or [])
            for t in terms:
                if "name" not in t or "weight" not in t:
                    raise KDError(f"{path}: method '{label}': every term needs 'name' and 'weight'")
            for n in (label, student, teacher or "x", d["dataset"], d["recipe"]):
                if not _NAME.match(str(n)):
                    raise KDError(f"{path}: '{n}' is not a valid name (letters, digits, _ . + -)")
            out.append(Cell(d["dataset"], label, student, teacher, d["recipe"],
                            ce_weight=float(spec.get("ce_weight", 1.0)), terms=terms,
                            assumed=tuple(d.get("assumed") or ()), source=d.get("source", ""),
                            file=str(path.relative_to(root))))
    return out


def validate(cell: Cell, root: Path = BENCHMARKS) -> None:
    """Every name of the cell resolves: dataset, models, methods, recipe."""
    import kd.methods  # noqa: F401  (fills the registries)
    import kd.models  # noqa: F401
    from kd.data import split_name
    from kd.registry import DATASETS, METHODS, MODELS
    DATASETS.get(split_name(cell.dataset)[0])
    MODELS.get(cell.student)
    if cell.teacher:
        MODELS.get(cell.teacher)
    for t in cell.terms:
        METHODS.get(t["name"])
    load_recipe(cell.recipe, root)


def load_cells(root: Path = BENCHMARKS, check: bool = True) -> dict[str, Cell]:
    """All cells of all benchmark files, keyed by id, teachers added. Duplicate ids are errors."""
    cells: dict[str, Cell] = {}
    for path in sorted(root.rglob("*.yaml")):
        if "recipes" in path.relative_to(root).parts:
            continue
        for c in _cells_from_file(path, root):
            if c.id in cells:
                raise KDError(f"{path}: cell {c.id} is already defined in {cells[c.id].file}")
            cells[c.id] = c
    for c in list(cells.values()):
        if c.teacher:
            t = c.teacher_cell(load_recipe(c.recipe, root))
            cells.setdefault(t.id, t)
    if check:
        for c in cells.values():
            validate(c, root)
    return cells


def find_cell(cid: str, root: Path = BENCHMARKS) -> Cell:
    """The cell `cid`, its names validated (all files are parsed; only this cell's names resolved)."""
    cells = load_cells(root, check=False)
    if cid in cells:
        validate(cells[cid], root)
        return cells[cid]
    import difflib
    close = difflib.get_close_matches(cid, list(cells), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `kd list` shows the cells"
    raise KDError(f"unknown cell '{cid}'{hint}")
