"""Cells and recipes as YAML data (benchmarks/).

A *recipe* (benchmarks/recipes/<name>.yaml) is a training protocol: epochs, batch, optimizer, LR
schedule. A *cell* is dataset (+variant) x teacher/student x method(s) x recipe; its id comes from
kd.catalog.ids.cell_id. Cell files (benchmarks/**/*.yaml, except recipes/) list a grid:

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
automatically when no file defines it. YAML is read with yaml.safe_load (kd.catalog.yamlsafe: duplicate
keys and aliases refused); unknown keys, unknown names, duplicate ids, a field of the wrong type or
out of range (checked for every recipe field, override and method hyperparameter) are errors, all
raised before anything is trained or written.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from kd.errors import KDError
from kd.catalog.ids import cell_id
from kd.catalog.paths import BENCHMARKS
from kd.catalog.yamlsafe import load_file




def read_yaml(path: Path) -> dict:
    """A cell or recipe file (kd.catalog.yamlsafe: duplicate keys and aliases refused), a mapping at the top;
    memoised per (file, modification time, size)."""
    try:
        st = Path(path).stat()
    except OSError as e:
        raise KDError(f"cannot read {path}: {e.strerror}") from None
    data = _read_yaml(str(path), st.st_mtime_ns, st.st_size)
    if not isinstance(data, dict):
        raise KDError(f"{path}: expected a mapping at the top level")
    return dict(data)


@functools.lru_cache(maxsize=4096)
def _read_yaml(path: str, mtime_ns: int, size: int):
    return load_file(Path(path))


def _build(cls, data: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KDError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except (TypeError, FieldError) as e:
        raise KDError(f"{where}: {e}") from None


class FieldError(KDError):
    """A field of the wrong type or out of range ('<field> = <value>: must be ...'); callers that
    know the file or flag re-raise it with that prefix."""


MAX_SEED = 2**32 - 1


def is_number(v) -> bool:
    """A real number from YAML or the CLI: int or float, not bool, finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(ok: bool, key: str, value, must: str) -> None:
    if not ok:
        raise FieldError(f"{key} = {value!r}: must be {must}")


def check_seed(seed, what: str = "seed") -> int:
    """Seeds are whole numbers in [0, 2**32 - 1] (what every generator accepts)."""
    if not (is_int(seed) and 0 <= seed <= MAX_SEED):
        raise KDError(f"{what} {seed!r}: must be a whole number in [0, {MAX_SEED}]")
    return seed


def check_override(key: str, value) -> None:
    """The overrides: epochs, batch_size, subset whole numbers >= 1; lr a finite number > 0; precision fp32|bf16."""
    if key == "lr":
        _need(is_number(value) and value > 0, key, value, "a finite number > 0")
    elif key == "precision":
        _need(value in ("fp32", "bf16"), key, value, "fp32 or bf16")
    else:
        _need(is_int(value) and value >= 1, key, value, "a whole number >= 1")


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
    amp: bool = False                    # bf16 autocast (any device); the override precision=bf16 sets it
    sync_bn: bool = False                # multi-GPU (kd.engine.dist): SyncBatchNorm instead of per-rank BatchNorm
    lr_scaling: str = "none"             # LR rule for the global batch: none | linear (see lr_factor)
    lr_reference_batch: int | None = None   # the batch the recipe's lr is for (needed by linear)
    description: str = ""
    source: str = ""
    assumed: tuple = ()
    overrides: dict = field(default_factory=dict)      # set by with_overrides; part of the id

    def __post_init__(self):
        """Type and range of every field; raises FieldError ('<field> = <value>: must be ...')."""
        _need(isinstance(self.name, str) and bool(_NAME.match(self.name)), "name", self.name,
              "a name of letters, digits, _ . + -")
        for k in ("epochs", "batch_size"):
            _need(is_int(getattr(self, k)) and getattr(self, k) >= 1, k, getattr(self, k), "a whole number >= 1")
        for k in ("lr", "gamma"):
            _need(is_number(getattr(self, k)) and getattr(self, k) > 0, k, getattr(self, k), "a finite number > 0")
        _need(is_number(self.momentum) and 0 <= self.momentum <= 1, "momentum", self.momentum, "a number in [0, 1]")
        _need(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
              "a finite number >= 0")
        _need(isinstance(self.milestones, tuple) and all(is_int(m) and 1 <= m <= self.epochs for m in self.milestones),
              "milestones", self.milestones, f"a list of whole numbers in [1, epochs = {self.epochs}]")
        _need(self.schedule in ("multistep", "cosine"), "schedule", self.schedule, "multistep or cosine")
        _need(self.optimizer in ("sgd", "adamw"), "optimizer", self.optimizer, "sgd or adamw")
        for k in ("nesterov", "amp"):
            _need(isinstance(getattr(self, k), bool), k, getattr(self, k), "true or false")
        _need(isinstance(self.lr_by_student, dict) and all(isinstance(k, str) and is_number(v) and v > 0
                                                           for k, v in self.lr_by_student.items()),
              "lr_by_student", self.lr_by_student, "a mapping of student name to a finite number > 0")
        _need(self.teacher_recipe is None or isinstance(self.teacher_recipe, str) and bool(_NAME.match(self.teacher_recipe)),
              "teacher_recipe", self.teacher_recipe, "a recipe name")
        for k in ("teacher_seed", "data_seed"):
            _need(is_int(getattr(self, k)) and 0 <= getattr(self, k) <= MAX_SEED, k, getattr(self, k),
                  f"a whole number in [0, {MAX_SEED}]")
        for k in ("description", "source"):
            _need(isinstance(getattr(self, k), str), k, getattr(self, k), "text")
        _need(isinstance(self.assumed, tuple) and all(isinstance(a, str) for a in self.assumed), "assumed",
              self.assumed, "a list of text")
        _need(isinstance(self.overrides, dict), "overrides", self.overrides, "a mapping")
        for k, v in self.overrides.items():
            check_override(k, v)
        _need(isinstance(self.sync_bn, bool), "sync_bn", self.sync_bn, "true or false")
        _need(self.lr_scaling in ("none", "linear"), "lr_scaling", self.lr_scaling, "none or linear")
        _need(self.lr_reference_batch is None or is_int(self.lr_reference_batch) and self.lr_reference_batch >= 1,
              "lr_reference_batch", self.lr_reference_batch, "a whole number >= 1")
        _need(self.lr_scaling != "linear" or self.lr_reference_batch is not None, "lr_reference_batch",
              self.lr_reference_batch, "set when lr_scaling is linear (the batch its lr is for)")

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
        bad = set(ov) - {"epochs", "batch_size", "lr", "subset", "precision"}
        if bad:
            raise KDError(f"unknown override(s) {', '.join(sorted(bad))}; valid: epochs, batch_size, lr, subset, precision")
        for k, v in ov.items():
            try:
                check_override(k, v)
            except FieldError as e:
                raise KDError(f"override {e}") from None
        if ov.get("precision") == ("bf16" if self.amp else "fp32"):
            ov.pop("precision")                  # the recipe's own precision: the same protocol, the same id
            if not ov:
                return self
        changes = {k: v for k, v in ov.items() if k not in ("subset", "precision")}
        if "precision" in ov:
            changes["amp"] = ov["precision"] == "bf16"      # bf16 autocast: another recipe id
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


def load_recipe(name: str, root: Path | None = None) -> Recipe:
    """benchmarks/recipes/<name>.yaml, every field checked. The recipe's id is its file name: a
    `name:` that differs from it is an error (it would file runs under another recipe's id)."""
    root = root or BENCHMARKS
    base = name.split("~")[0]
    path = root / "recipes" / f"{base}.yaml"
    if not _NAME.match(base) or not path.is_file():
        valid = sorted(p.stem for p in (root / "recipes").glob("*.yaml"))
        raise KDError(f"unknown recipe '{base}'; valid recipes: {', '.join(valid)}")
    data = read_yaml(path)
    if "overrides" in data:
        raise KDError(f"{path}: 'overrides' is not a recipe key (overrides come from the command line)")
    if data.setdefault("name", base) != base:
        raise KDError(f"{path}: name {data['name']!r} differs from the file name '{base}' (a recipe's id is its "
                      f"file name: rename the file or fix the name)")
    for k in ("milestones", "assumed"):
        if isinstance(data.get(k), list):
            data[k] = tuple(data[k])
    return _build(Recipe, data, str(path))


_GRID_KEYS = {"dataset", "recipe", "methods", "pairs", "models", "pair_params", "assumed", "source", "table", "note"}
_NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")


def _is_names(v, n: int | None = None) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v) and (n is None or len(v) == n)


def _check_grid_file(path: Path, d: dict) -> None:
    """Checks a grid file's keys and the type of each value."""
    unknown = set(d) - _GRID_KEYS
    if unknown:
        raise KDError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_GRID_KEYS))}")
    for k in ("dataset", "recipe", "methods"):
        if k not in d:
            raise KDError(f"{path}: missing key '{k}'")

    def need(ok, key, must):
        if not ok:
            raise KDError(f"{path}: {key} = {d.get(key)!r}: must be {must}"[:400])

    need(isinstance(d["dataset"], str), "dataset", "a dataset name")
    need(isinstance(d["recipe"], str), "recipe", "a recipe name")
    need(isinstance(d["methods"], dict) and all(isinstance(k, str) and (v is None or isinstance(v, dict))
                                                for k, v in d["methods"].items()),
         "methods", "a mapping of label to {ce_weight, terms, teacherless}")
    need(d.get("pairs") is None or isinstance(d["pairs"], list) and all(_is_names(p, 2) for p in d["pairs"]),
         "pairs", "a list of [teacher, student] name pairs")
    need(d.get("models") is None or _is_names(d["models"]), "models", "a list of model names")
    need(d.get("pair_params") is None or isinstance(d["pair_params"], dict) and all(
        isinstance(v, dict) and all(isinstance(hp, dict) for hp in v.values()) for v in d["pair_params"].values()),
         "pair_params", "a mapping of pair to {method: {hyperparameter: value}}")
    need(d.get("assumed") is None or _is_names(d["assumed"]), "assumed", "a list of text")
    for k in ("source", "note"):
        need(isinstance(d.get(k, ""), str), k, "text")
    need(d.get("table") is None or isinstance(d["table"], str) or _is_names(d["table"]), "table",
         "a table id or a list of them")


def _check_method_spec(path: Path, label: str, spec: dict) -> None:
    """Checks one method of a grid file: its keys, ce_weight, teacherless and terms."""
    bad = set(spec) - {"ce_weight", "terms", "teacherless"}
    if bad:
        raise KDError(f"{path}: method '{label}': unknown key(s) {', '.join(sorted(bad))}; valid: ce_weight, terms, teacherless")
    where = f"{path}: method '{label}'"
    if not (is_number(spec.get("ce_weight", 1.0)) and spec.get("ce_weight", 1.0) >= 0):
        raise KDError(f"{where}: ce_weight = {spec['ce_weight']!r}: must be a finite number >= 0")
    if not isinstance(spec.get("teacherless", False), bool):
        raise KDError(f"{where}: teacherless = {spec['teacherless']!r}: must be true or false")
    if not (isinstance(spec.get("terms") or [], list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and "weight" in t for t in spec.get("terms") or [])):
        raise KDError(f"{where}: terms must be a list of {{name, weight, ...}} mappings")


def _method_cells(path: Path, root: Path, d: dict, label: str, spec: dict, pairs: list) -> list[Cell]:
    """The cells of one method of a grid file: on its pairs, or on its models if it has no teacher."""
    _check_method_spec(path, label, spec)
    where = f"{path}: method '{label}'"
    teacherless = label == "baseline" or spec.get("teacherless", False)
    mine = [(t, s) for t, s in pairs if (t is None) == teacherless]
    if not mine:
        raise KDError(f"{path}: method '{label}' has no cells: methods with a teacher run on 'pairs', "
                      f"baseline and teacherless methods on 'models'")
    out = []
    for teacher, student in mine:
        key = f"{student}_from_{teacher}" if teacher else student
        per_pair = (d.get("pair_params") or {}).get(key, {})
        terms = tuple({**t, **per_pair.get(t["name"], {})} for t in spec.get("terms") or [])
        for t in terms:
            if not is_number(t["weight"]):
                raise KDError(f"{where}: term '{t['name']}': weight = {t['weight']!r}: must be a finite number")
        for n in (label, student, teacher or "x", d["dataset"], d["recipe"]):
            if not _NAME.match(n):
                raise KDError(f"{path}: '{n}' is not a valid name (letters, digits, _ . + -)")
        out.append(Cell(d["dataset"], label, student, teacher, d["recipe"],
                        ce_weight=float(spec.get("ce_weight", 1.0)), terms=terms,
                        assumed=tuple(d.get("assumed") or ()), source=d.get("source", ""),
                        file=str(path.relative_to(root))))
    return out


def _cells_from_file(path: Path, root: Path) -> list[Cell]:
    d = read_yaml(path)
    _check_grid_file(path, d)
    pairs = [(t, s) for t, s in d.get("pairs") or []] + [(None, m) for m in d.get("models") or []]
    if not pairs:
        raise KDError(f"{path}: no 'pairs' or 'models' listed")
    out = []
    for label, spec in d["methods"].items():
        out += _method_cells(path, root, d, label, spec or {}, pairs)
    return out


def validate(cell: Cell, root: Path | None = None) -> None:
    """Every name of the cell resolves (dataset, models, methods, recipes), checked against the name
    sets of kd.catalog.names (equal to the registries, read without importing torch, so `kd list` stays
    fast). A method's hyperparameters are checked against its constructor when the cell is about
    to run (kd.methods.check_terms)."""
    from kd.catalog import names
    names.check("dataset", cell.dataset.split("-")[0])
    names.check("model", cell.student)
    if cell.teacher:
        names.check("model", cell.teacher)
    for t in cell.terms:
        names.check("method", t["name"])
    recipe = load_recipe(cell.recipe, root)
    if cell.teacher and recipe.teacher_recipe:
        load_recipe(recipe.teacher_recipe, root)


def load_cells(root: Path | None = None, check: bool = True) -> dict[str, Cell]:
    """All cells of all benchmark files, keyed by id, teachers added. Duplicate ids are errors."""
    root = root or BENCHMARKS
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


def find_cell(cid: str, root: Path | None = None) -> Cell:
    """The cell `cid`, its names validated (all files are parsed; only this cell's names resolved)."""
    root = root or BENCHMARKS
    cells = load_cells(root, check=False)
    if cid in cells:
        validate(cells[cid], root)
        return cells[cid]
    import difflib
    close = difflib.get_close_matches(cid, list(cells), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `kd list` shows the cells"
    raise KDError(f"unknown cell '{cid}'{hint}")
