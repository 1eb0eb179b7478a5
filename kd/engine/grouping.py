"""Which built runs train together (kd.engine.loop): pure functions of the runs' keys.

Runs share a group when they share the dataset (variant and subset), the recipe id (overrides
included), the seed, the execution, the teacher checkpoint and the way it runs (its BatchNorm
mode: a group never mixes modes) and have no stages of their own (FitNet hints, AB/FSP/FT
initialisation run alone). A run without a teacher (the baseline row, online methods) joins the
group of its dataset, recipe and seed when there is one.
"""
from __future__ import annotations


def group_key(m) -> tuple | None:
    """Runs with equal keys can share batches and the teacher forward (None: the run trains alone)."""
    if m.d.stages:
        return None
    return (m.spec.cell.dataset, m.spec.recipe.id, m.seed, m.execution.mode, m.execution.channels_last,
            m.teacher_id, m.teacher_sha, m.teacher_mode)


def partition(members: list) -> list[list]:
    """Groups of runs, in the order of their first member (lists of one for those that train alone)."""
    groups: dict[tuple, list] = {}
    alone, loose = [], []
    for m in members:
        k = group_key(m)
        if k is None:
            alone.append([m])
        elif m.d.teacher is None:
            loose.append(m)
        else:
            groups.setdefault(k, []).append(m)
    for m in loose:
        k = group_key(m)
        target = next((g for key, g in groups.items() if key[:5] == k[:5]), None)
        if target is not None:
            target.append(m)
        else:
            groups.setdefault(k, []).append(m)
    return list(groups.values()) + alone
