"""Every distillation method, one file each (the contract they follow: kd.methods.contract);
importing this package imports every module in it, which registers them in kd.registry.METHODS."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")


def check_terms(cell) -> None:
    """Every hyperparameter of every term of `cell` names a constructor argument of its method and fits
    its type (one KDError line otherwise): checked before a cell runs."""
    from kd.methods.contract import check_hyperparameters
    from kd.registry import METHODS
    where = f"cell {cell.id}" + (f" ({cell.file})" if cell.file else "")
    for t in cell.terms:
        check_hyperparameters(METHODS.get(t["name"]), t, where)
