"""Model zoo: registry names, pinned parameter counts, the extract()/head() contract, and
strict loading of RepDistiller-layout checkpoints through kd.models.load_weights.

tests/data/repdistiller_keys.json holds {model: {state_dict key: shape}} as produced by
HobbitLong/RepDistiller models/ (commit b84f547c5db6a35318d4671d7d5c4de74c822403) with
num_classes=100; resnet26, wrn_10_2 and wrn_28_2 were built from its generic ResNet /
WideResNet classes. Logits and features were checked equal to RepDistiller's offline.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kd.errors import KDError
from kd.models import load_weights
from kd.registry import MODELS
from zoo import free_models, n_params  # noqa: F401  (free_models is a fixture)
import zoo

KEYS = json.loads((Path(__file__).parent / "data" / "repdistiller_keys.json").read_text())

# exact parameter counts at num_classes=100 (equal to RepDistiller's models)
PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet26": 375_540,
    "resnet32": 472_756, "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_10_2": 315_316, "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_28_2": 1_479_220,
    "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436, "vgg19": 20_086_692,
    "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528, "ResNet50": 23_705_252,
    "tiny_t": 81_140, "tiny_s": 6_044,
}
# the rounded figures the papers quote
PARAMS_M = {"resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "wrn_16_2": 0.70,
            "resnet110": 1.74, "resnet20": 0.28, "vgg13": 9.46, "vgg8": 3.97}
N_FEATS = {n: 6 if n.startswith("vgg") or n in ("MobileNetV2", "ResNet50") else 5 for n in PARAMS}
NO_BN_BEFORE_RELU = {"ShuffleV1", "ShuffleV2"}  # RepDistiller raises too

pytestmark = pytest.mark.usefixtures("free_models")


def build(name: str) -> nn.Module:
    return zoo.build(name, 100)


def test_registry_names():
    assert set(MODELS) >= set(PARAMS)
    assert {n for n in MODELS if n in PARAMS} == set(PARAMS)
    assert set(KEYS) == set(PARAMS) - {"tiny_t", "tiny_s"}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name):
    model = build(name)
    assert n_params(model) == PARAMS[name]
    if name in PARAMS_M:
        assert round(PARAMS[name] / 1e6, 2) == PARAMS_M[name]
    assert model.num_classes == 100


def test_tiny_sizes_and_num_classes():
    assert 50_000 <= n_params(MODELS.get("tiny_t")(num_classes=10)) <= 100_000
    assert 3_000 <= n_params(MODELS.get("tiny_s")(num_classes=10)) <= 8_000
    m = MODELS.get("tiny_s")(num_classes=10)
    assert m.num_classes == 10 and m(torch.randn(2, 3, 20, 28)).shape == (2, 10)  # any input size


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_extract_contract(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model.extract(x)
        pre_feats, pre_logits = model.extract(x, preact=True)
        plain = model(x)
        from_head = model.head(feats[-2])
    assert logits.shape == (2, 100)
    assert len(feats) == len(pre_feats) == N_FEATS[name]
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)
    torch.testing.assert_close(pre_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(from_head, logits, rtol=0, atol=0)
    # the last entry is the pooled embedding that the final linear layer reads
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert feats[-1].shape == (2, fc.in_features)
    torch.testing.assert_close(fc(feats[-1]), logits)
    assert [f.dim() for f in feats] == [4] * (len(feats) - 1) + [2]
    assert [f.shape for f in pre_feats] == [f.shape for f in feats]
    assert model.get_stage_channels() == [f.shape[1] for f in feats[:-1]]
    assert isinstance(model.get_feat_modules(), nn.ModuleList)
    if name in NO_BN_BEFORE_RELU:
        with pytest.raises(KDError):
            model.get_bn_before_relu()
    else:
        bns = model.get_bn_before_relu()
        assert bns and all(isinstance(b, nn.BatchNorm2d) for b in bns)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "ShuffleV2", "tiny_s"])
def test_channels_last_and_backward(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    fresh = MODELS.get(name)(num_classes=100).train()
    feats, logits = fresh.extract(x, preact=True)
    (logits.sum() + sum(f.float().mean() for f in feats)).backward()
    assert all(p.grad is not None for p in fresh.parameters())


def _random_sd(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randint(0, 100, shape, generator=g) if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g) for k, shape in layout.items()}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_repdistiller_layout_loads_strict(name, tmp_path):
    model = MODELS.get(name)(num_classes=100)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == KEYS[name]
    sd = _random_sd(KEYS[name])
    for i, payload in enumerate(({"model": sd, "epoch": 240, "best_acc": torch.tensor(79.4)}, sd)):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(payload, path)
        fresh = MODELS.get(name)(num_classes=100)
        assert load_weights(fresh, path) is fresh
        got = fresh.state_dict()
        assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in sd.items())


@pytest.fixture
def small_sd():
    return MODELS.get("resnet8")(num_classes=100).state_dict()


def test_load_weights_wrappers_and_prefix(small_sd, tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in small_sd.items()}}, path)
    model = load_weights(MODELS.get("resnet8")(num_classes=100), path)
    assert torch.equal(model.fc.weight, small_sd["fc.weight"])
    # an old checkpoint without BN num_batches_tracked still loads
    torch.save({k: v for k, v in small_sd.items() if not k.endswith("num_batches_tracked")}, path)
    load_weights(MODELS.get("resnet8")(num_classes=100), path)


def _refusal(model, path) -> str:
    with pytest.raises(KDError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_load_weights_mismatch_messages(small_sd, tmp_path):
    path = tmp_path / "bad.pth"
    sd = dict(small_sd)
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, path)
    msg = _refusal(MODELS.get("resnet8")(num_classes=100), path)
    assert "missing" in msg and "fc.bias" in msg and "unexpected" in msg and "extra.weight" in msg
    torch.save(small_sd, path)
    msg = _refusal(MODELS.get("resnet8")(num_classes=10), path)
    assert "fc.weight" in msg and "shape" in msg
    msg = _refusal(MODELS.get("resnet14")(num_classes=100), path)
    assert "missing" in msg and "(+" in msg  # long key lists are cut to the first few


def test_load_weights_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    assert "no state_dict" in _refusal(MODELS.get("tiny_s")(), path)
    torch.save({"model": {"a": 1}}, path)
    assert "no state_dict" in _refusal(MODELS.get("tiny_s")(), path)
    path.write_text("not a checkpoint")
    _refusal(MODELS.get("tiny_s")(), path)
    assert "does not exist" in _refusal(MODELS.get("tiny_s")(), tmp_path / "nope.pth")


class _Evil:
    marker = ""

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_load_weights_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": evil}, f, protocol=2)
    torch.save({"model": evil}, tmp_path / "evil_zip.pth")
    for p in (path, tmp_path / "evil_zip.pth"):
        msg = _refusal(MODELS.get("tiny_s")(), p)
        assert "weights_only" in msg
    assert not marker.exists()

