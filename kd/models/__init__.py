"""The model zoo: importing this package registers every model in kd.registry.MODELS.

Every model has: forward(x) -> logits; extract(x, preact=False) -> (feats, logits) with
feats = [stem, stage outputs..., pooled embedding] as RepDistiller's
forward(x, is_feat=True, preact=preact); head(fmap) -> logits (final pooling and
classifier on a last-stage map, the shape of feats[-2]); get_feat_modules();
get_bn_before_relu(); get_stage_channels(); and the attribute num_classes.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping

import torch

from kd.errors import KDError

for _m in pkgutil.iter_modules(__path__):          # every model module registers its models
    importlib.import_module(f"{__name__}.{_m.name}")


def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: torch.nn.Module, path) -> torch.nn.Module:
    """Load a checkpoint into model (strict) and return the model.

    Accepts {'model': sd}, {'state_dict': sd} (RepDistiller / mdistiller teachers) or a plain
    state_dict; strips a leading 'module.' (DataParallel). Loads with weights_only=True, so a
    pickle that would run code is refused. Every failure is a one-line KDError.
    """
    import warnings
    try:
        with warnings.catch_warnings():          # torch's note on a foreign pickle protocol: not a second line
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KDError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line refusal
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
        why = next((ln for ln in lines if "global" in ln.lower()), lines[0])  # the refused class, if any
        raise KDError(f"checkpoint {path} is not a plain state_dict: torch.load(weights_only=True) "
                      f"refused it ({type(e).__name__}: {why})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise KDError(f"checkpoint {path} holds no state_dict (expected name -> tensor, "
                      f"optionally under 'model' or 'state_dict')")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}

    own = model.state_dict()
    # old checkpoints may lack BN num_batches_tracked; load_state_dict tolerates that
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing: {_few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_few(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatches (checkpoint vs model): {_few(shapes, 3)}" if shapes else ""]
        raise KDError(f"checkpoint {path} does not fit {type(model).__name__}: "
                      + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise KDError(f"checkpoint {path} does not fit {type(model).__name__}: "
                      + " ".join(str(e).split())[:300]) from None
    return model
