"""The one cell-id scheme used by cells, result lines, reference entries and reports.

    <dataset>/<label>/<student>_from_<teacher>/<recipe>     (a cell with a teacher)
    <dataset>/<label>/<model>/<recipe>                      (no teacher: baseline, DML, ONE)

dataset  a dataset name plus its variant, e.g. cifar100, cifar10-noisy0.2, cifar10-imb0.6, svhn-extra
label    the method combination as the tables print it, lower case, joined by '+': kd, crd+kd, ipot+crd+kd
recipe   the training recipe name (benchmarks/recipes/<recipe>.yaml); a run with overrides gets
         '<recipe>~key=value,...' so that it never mixes with full-protocol results.
"""
from __future__ import annotations


def cell_id(dataset: str, label: str, student: str, teacher: str | None, recipe: str) -> str:
    model = f"{student}_from_{teacher}" if teacher else student
    return f"{dataset}/{label}/{model}/{recipe}"


def parse_cell_id(cid: str) -> dict:
    """Inverse of cell_id (teacher is None for teacher-less cells)."""
    parts = cid.split("/")
    if len(parts) != 4:
        raise ValueError(f"malformed cell id '{cid}': expected dataset/label/model/recipe")
    dataset, label, model, recipe = parts
    student, _, teacher = model.partition("_from_")
    return dict(dataset=dataset, label=label, student=student, teacher=teacher or None, recipe=recipe)
