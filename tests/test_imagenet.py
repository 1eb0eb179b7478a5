"""The ImageNet side: models (kd/models/torchvision_timm.py), the streaming 'imagenet' dataset
(kd/data/imagenet.py), DeiT's distillation losses (kd/methods/deit.py) and a short run through the loop.

Parameter counts are pinned at num_classes=1000 (torchvision's resnet18/34/50 and timm's
deit_*_distilled_patch16_224 / deit_*_patch16_224 / regnety_160 / resnetv2_152x2_bit count the same;
the MobileNet v1 count equals mdistiller's MobileNetV1). bit_m_r152x2 is only built on the meta
device (no memory, no initialisation cost).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kd.data.imagenet  # noqa: F401  (registers the 'imagenet' dataset)
import kd.methods  # noqa: F401
import kd.models  # noqa: F401
from kd.catalog.cells import Cell, Recipe
from kd.data import load_dataset
from kd.errors import KDError
from kd.methods.contract import Context, Step
from kd.methods.deit import DeiTHard, DeiTSoft, deit_hard_loss, deit_soft_loss
from kd.models import load_weights
from kd.registry import METHODS, MODELS
from zoo import free_models, n_params  # noqa: F401  (free_models is a fixture)
import zoo

PARAMS = {
    "tv_resnet18": 11_689_512, "tv_resnet34": 21_797_672, "tv_resnet50": 25_557_032, "resnet50_in": 25_557_032,
    "mobilenet_v1": 4_231_976,
    "deit_tiny": 5_910_800, "deit_small": 22_436_432,                 # distilled: + dist token, head_dist
    "deit_tiny_nodist": 5_717_416, "deit_small_nodist": 22_050_664,
    "regnety_160": 83_590_140,
}
BIT_PARAMS = 236_335_208
VIT = {"deit_tiny", "deit_small", "deit_tiny_nodist", "deit_small_nodist"}
pytestmark = pytest.mark.usefixtures("free_models")


def build(name: str) -> nn.Module:
    return zoo.build(name, 1000)


def test_param_counts():
    assert {n: n_params(build(n)) for n in PARAMS} == PARAMS
    assert all(build(n).num_classes == 1000 for n in PARAMS)
    with torch.device("meta"):
        bit = MODELS.get("bit_m_r152x2")(num_classes=1000)
    assert n_params(bit) == BIT_PARAMS and hasattr(bit, "extract")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_interface(name):
    m = build(name)
    x = torch.randn(1, 3, 224, 224) if name in VIT else torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = m.extract(x)
        pre_feats, pre_logits = m.extract(x, preact=True)
        plain = m(x)
        from_head = m.head_logits(feats[-2]) if name in VIT else m.head(feats[-2])
    assert logits.shape == (x.shape[0], 1000) and len(feats) == len(pre_feats) == 6
    for other in (plain, pre_logits, from_head):
        torch.testing.assert_close(other, logits, rtol=0, atol=0)
    assert feats[-1].dim() == 2 and [f.shape for f in pre_feats] == [f.shape for f in feats]
    same = all(torch.equal(a, b) for a, b in zip(feats, pre_feats))
    assert same == m.preact_equals_post
    assert isinstance(m.get_feat_modules(), nn.ModuleList)
    if name in VIT:
        assert all(f.dim() == 3 for f in feats[:-1])
        assert m.get_stage_channels() == [f.shape[2] for f in feats[:-1]]
        with pytest.raises(KDError):
            m.get_bn_before_relu()
    else:
        assert all(f.dim() == 4 for f in feats[:-1])
        assert m.get_stage_channels() == [f.shape[1] for f in feats[:-1]]
        assert all(isinstance(b, nn.BatchNorm2d) for b in m.get_bn_before_relu())
        fc = m.head.fc if name == "regnety_160" else m.fc
        torch.testing.assert_close(fc(feats[-1]), logits)
        assert feats[1].shape[-1] == 16 and feats[-2].shape[-1] == 2     # strides 4 .. 32 at 64 px


def test_deit_distillation_token():
    torch.manual_seed(0)
    m = MODELS.get("deit_tiny")(num_classes=7)
    x = torch.randn(1, 3, 224, 224)
    m.train()
    feats, logits = m.extract(x)
    torch.testing.assert_close(logits, m.head(feats[-1]), rtol=0, atol=0)        # class token in training
    z_d = m.dist_logits(feats)
    torch.testing.assert_close(z_d, m.head_dist(feats[-2][:, 1]), rtol=0, atol=0)
    z_d.sum().backward()                                                       # same graph as the forward
    assert m.head_dist.weight.grad is not None and m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert m.head.weight.grad is None
    m.eval()
    with torch.no_grad():
        feats, logits = m.extract(x)
        avg = (m.head(feats[-2][:, 0]) + m.head_dist(feats[-2][:, 1])) / 2
    torch.testing.assert_close(logits, avg, rtol=0, atol=0)
    torch.testing.assert_close(m(x), avg, rtol=0, atol=0)
    assert not hasattr(MODELS.get("mobilenet_v1")(num_classes=7), "dist_logits")


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet34", "tv_resnet50"])
def test_torchvision_checkpoints_load_strict(name, tmp_path):
    import torchvision
    torch.manual_seed(1)
    tv = getattr(torchvision.models, name[3:])(weights=None).eval()
    ours = MODELS.get(name)(num_classes=1000)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    load_weights(ours, tmp_path / "tv.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.extract(x, preact=True)[1], tv(x), rtol=0, atol=0)


def test_mobilenet_v1_layout():
    sd = MODELS.get("mobilenet_v1")(num_classes=1000).state_dict()
    # mdistiller MobileNetV1: model.0 = conv_bn (conv, bn), model.1..13 = conv_dw (conv, bn, -, conv, bn), fc
    assert sd["model.0.0.weight"].shape == (32, 3, 3, 3) and sd["model.1.0.weight"].shape == (32, 1, 3, 3)
    assert sd["model.13.3.weight"].shape == (1024, 1024, 1, 1) and sd["fc.weight"].shape == (1000, 1024)
    assert len([k for k in sd if k.endswith(".weight")]) == 2 + 13 * 4 + 1


# --- the streaming dataset -----------------------------------------------------------------------

def write_folder(root, per_class=(4, 2), classes=("n01", "n02"), size=32):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            d = root / "imagenet" / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)   # also non-square
                img[..., c] = 255 - img[..., c] // 4                                 # a class signal
                Image.fromarray(img).save(d / f"{name}_{i}.JPEG", quality=90)
    return root


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_IMAGENET_SIZE", "32")
    monkeypatch.setenv("KD_WORKERS", "0")
    return write_folder(tmp_path / "data")


def batches(data, seed, bs=3):
    g = torch.Generator().manual_seed(seed)
    return list(data.train_batches(bs, g))


def test_dataset_streams(folder):
    ds = load_dataset("imagenet", folder)
    assert (ds.name, ds.num_classes, ds.num_train, len(ds.test_y)) == ("imagenet", 2, 8, 4)
    assert ds.info["image_size"] == 32 and ds.info["eval_resize"] == 36 and ds.info["streaming"]
    data = ds.on_device(torch.device("cpu"))
    assert (data.num_train, data.num_test) == (8, 4)
    probe = data.probe(2)
    assert probe.shape == (2, 3, 32, 32) and probe.dtype == torch.float32
    out = batches(data, 0)
    assert [len(i) for i, _, _ in out] == [3, 3, 2]
    idx = torch.cat([i for i, _, _ in out])
    assert sorted(idx.tolist()) == list(range(8)) and idx.tolist() != list(range(8))
    for i, x, y in out:
        assert x.shape == (len(i), 3, 32, 32) and torch.equal(y, ds.train_y[i])
    # deterministic in the generator, different across seeds; augmentation changes the pixels
    again = batches(data, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(out, again))
    other = batches(data, 1)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(out, other))
    x0 = torch.cat([x for _, x, _ in out])[idx.argsort()]
    assert not torch.allclose(x0[:2], probe)
    # normalisation = ToTensor + Normalize(ImageNet mean/std)
    from PIL import Image
    from torchvision import transforms as T
    path = sorted((folder / "imagenet" / "train" / "n01").iterdir())[0]
    ref = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(Image.open(path).convert("RGB"))
    torch.testing.assert_close(probe[0], ref, rtol=1e-5, atol=1e-5)
    tests = list(data.test_batches())
    assert torch.equal(torch.cat([y for _, y in tests]), torch.tensor([0, 0, 1, 1]))


def test_dataset_workers_and_variants(folder):
    ds = load_dataset("imagenet-sub5", folder)
    assert ds.num_train == 5 and ds.info["subset"] == 5
    serial = batches(ds.on_device("cpu"), 3, bs=4)
    parallel = batches(kd.data.imagenet.StreamingData(ds, torch.device("cpu"), workers=1), 3, bs=4)
    assert sorted(torch.cat([i for i, _, _ in serial]).tolist()) == list(range(5))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):                   # the same batches, whatever decodes them
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_dataset_missing(tmp_path, monkeypatch):
    with pytest.raises(KDError, match=r"imagenet.*missing.*train/<class>/<image>"):
        load_dataset("imagenet", tmp_path)
    (tmp_path / "imagenet" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(KDError, match=r"val is missing"):
        load_dataset("imagenet", tmp_path)
    monkeypatch.setenv("KD_IMAGENET_SIZE", "big")
    with pytest.raises(KDError, match="KD_IMAGENET_SIZE"):
        kd.data.imagenet.image_size()


# --- DeiT losses ---------------------------------------------------------------------------------

def test_deit_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    z_d, z_t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 3
    hard = -F.log_softmax(z_d, 1)[torch.arange(4), z_t.argmax(1)].mean()
    torch.testing.assert_close(deit_hard_loss(z_d, z_t), hard)
    for T in (1.0, 3.0):
        p_t, log_p_s = F.softmax(z_t / T, 1), F.log_softmax(z_d / T, 1)
        kl = (p_t * (p_t.log() - log_p_s)).sum() * T * T / 20          # sum over B and K, / (B * K)
        torch.testing.assert_close(deit_soft_loss(z_d, z_t, T), kl)


def test_deit_methods_read_the_distillation_token():
    torch.manual_seed(0)
    s = MODELS.get("deit_tiny")(num_classes=5).train()
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([0, 3])
    feats, logits = s.extract(x)
    z_t = torch.randn(2, 5)
    ctx = Context(s, None, [f.shape for f in feats], [], 5, 10, 1, 1, (3, 224, 224))
    step = Step(x, y, torch.arange(2), logits, feats, z_t, [], 0, s, None)
    z_d = s.head_dist(feats[-2][:, 1])
    assert not torch.allclose(z_d, logits)
    torch.testing.assert_close(DeiTHard(ctx)(step), deit_hard_loss(z_d, z_t))
    torch.testing.assert_close(DeiTSoft(ctx)(step), deit_soft_loss(z_d, z_t, 3.0))
    assert METHODS["deit_soft"] is DeiTSoft and DeiTSoft(ctx).T == 3.0
    cnn = Step(x, y, torch.arange(2), logits, feats, z_t, [], 0, MODELS.get("mobilenet_v1")(num_classes=5), None)
    torch.testing.assert_close(DeiTHard(ctx)(cnn), deit_hard_loss(logits, z_t))   # no token: class logits


# --- a short run through the loop -----------------------------------------------------------------

def test_run_through_the_loop(folder, isolated):
    from kd.engine.teacher import freeze
    from harness import View, member
    recipe = Recipe("imagenet_test", epochs=2, batch_size=4, lr=0.01, milestones=(1,), weight_decay=1e-4)
    cell = Cell("imagenet", "crd+kd", "tv_resnet18", "tv_resnet18", "imagenet_test",
                terms=({"name": "crd", "weight": 0.8}, {"name": "kd", "weight": 1.0, "T": 4}))
    torch.manual_seed(5)
    run = View(member(cell, recipe, folder, freeze(MODELS.get("tv_resnet18")(num_classes=2))))
    crd = run.methods[0]
    rec = run.train()
    assert rec["status"] == "ok" and len(rec["curve"]) == 2 and rec["config"]["num_train"] == 8
    assert rec["config"]["dataset_info"]["image_size"] == 32
    assert sorted(crd.labels.tolist()) == sorted(run.ds.train_y.tolist())   # every index seen, with its label


def test_run_cell_imagenet_recipe(folder, isolated):
    from kd.catalog.cells import load_recipe
    from kd.engine import run_cell
    try:
        load_recipe("imagenet")
    except KDError:
        pytest.skip("no benchmarks/recipes/imagenet.yaml")
    cell = Cell("imagenet", "kd", "tv_resnet18", "tv_resnet34", "imagenet", ce_weight=0.5,
                terms=({"name": "kd", "weight": 0.5, "T": 1},))
    rec = run_cell(cell, 0, device="cpu", overrides={"epochs": 1, "batch_size": 4}, data_root=folder,
                   progress=False, log=lambda *a: None)             # trains the tv_resnet34 teacher first
    assert rec["status"] == "ok" and rec["teacher_cell"].startswith("imagenet/baseline/tv_resnet34/")


@pytest.mark.slow                 # 26 s on a loaded 2-core machine (a 224 px RegNetY-160 teacher)
def test_registered_deit_cell_trains_through_the_loop(tmp_path, monkeypatch, isolated):
    """The DeiT-Ti hard-distillation cell of seed 002 Table 1 at its real 224 px input: the RegNetY-160
    teacher is trained first (its cell), then the student; a smoke recipe, 8 generated images."""
    from kd.catalog.cells import find_cell
    from kd.engine import run_cell
    monkeypatch.setenv("KD_IMAGENET_SIZE", "224")
    monkeypatch.setenv("KD_WORKERS", "0")
    root = write_folder(tmp_path / "data")
    rec = run_cell(find_cell("imagenet/deit_hard/deit_tiny_from_regnety_160/deit"), 0, device="cpu",
                   overrides={"epochs": 1, "batch_size": 4}, data_root=root, progress=False, log=lambda *a: None)
    assert rec["status"] == "ok" and rec["teacher_cell"] == "imagenet/baseline/regnety_160/deit~batch_size=4,epochs=1"
    assert rec["config"]["dataset_info"]["image_size"] == 224 and len(rec["curve"]) == 1
