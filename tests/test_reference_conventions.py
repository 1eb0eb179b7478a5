"""The four conventions where the loop once differed from the reference code (issue 9), each checked
through the loop itself on tiny models and the tiny generated CIFAR-100:

1. ReviewKD fuses the student's plain stage outputs (mdistiller STU_PREACT False), not ReLU(preact).
2. OFD's teacher runs its BatchNorm on batch statistics (mdistiller / clovaai), frozen all the same.
3. AB/FSP/FT initialisation stages train only their modules, the student otherwise in eval mode
   (RepDistiller helper/pretrain.py); FT's stage runs no student forward.
4. Each method gets the feature kind it asked for, in a cell that mixes kinds.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kd.methods  # noqa: F401
from kd.catalog.cells import Cell, load_recipe
from kd.errors import KDError
from kd.methods.contract import Context, Step
from kd.registry import METHODS
from kd.engine.execution import Execution
from kd.records.store import checkpoint_path, sha256_file
from kd.engine import run_cell
from kd.engine.teacher import build_model, freeze
from harness import View, member

CPU = torch.device("cpu")


def make_run(data_root, student, teacher, terms, ce_weight=1.0, teacher_model=None) -> View:
    cell = Cell("cifar100", "conv", student, teacher, "crd", ce_weight=ce_weight, terms=tuple(terms))
    recipe = load_recipe("crd").with_overrides(epochs=1, batch_size=48)
    if teacher_model is None and teacher:
        torch.manual_seed(0)
        teacher_model = freeze(build_model(teacher, 100))
    return View(member(cell, recipe, data_root, teacher_model,
                       execution=Execution("eager", channels_last=False)))      # the references' layout: same rounding


def batch(run: View, n: int = 8):
    gen = torch.Generator().manual_seed(0)
    idx, x, y = next(iter(run.data.train_batches(n, gen)))
    return idx, x, y


def bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# -- 1. ReviewKD: the student's plain maps -------------------------------------------------------

def test_reviewkd_fuses_the_student_maps_as_they_are_negative_values_included():
    torch.manual_seed(0)
    s_shapes = [torch.Size(s) for s in ((2, 4, 8, 8), (2, 4, 8, 8), (2, 8, 4, 4), (2, 8))]
    t_shapes = [torch.Size(s) for s in ((2, 4, 8, 8), (2, 6, 8, 8), (2, 6, 4, 4), (2, 6))]
    m = METHODS["reviewkd"](Context(None, None, s_shapes, t_shapes, 10, 64, 10, 4, (3, 8, 8))).eval()
    s_feats = [torch.randn(2, *s[1:]) for s in s_shapes]          # plain maps may be negative (WRN, MBv2)
    t_feats = [torch.randn(2, *s[1:]) for s in t_shapes]
    seen = {}
    for l, abf in enumerate(m.abfs):
        abf.conv1.register_forward_pre_hook(lambda mod, args, l=l: seen.__setitem__(l, args[0]))
    m(Step(None, None, None, None, s_feats, None, t_feats, 25, 25.0))
    for l, i in enumerate(m.s_idx):
        want = s_feats[i] if s_feats[i].dim() == 4 else s_feats[i][:, :, None, None]
        torch.testing.assert_close(seen[l], want, rtol=0, atol=0)


def test_loop_hands_reviewkd_plain_student_maps_of_a_channel_shuffle_net_and_preact_teacher_maps(data_root):
    run = make_run(data_root, "ShuffleV2", "tiny_t", [{"name": "reviewkd", "weight": 1.0}])
    (m,) = run.methods
    assert m.kinds() == (False, True)
    run.student.eval()
    _, x, y = batch(run, 4)
    with torch.no_grad():
        step = run._forward(x, y, None, 0).select(m.kinds())
        plain, _ = run.student.extract(x, preact=False)
        pre, _ = run.student.extract(x, preact=True)
        t_pre, _ = run.teacher.extract(x, preact=True)
    for got, want in zip(step.s_feats, plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(step.t_feats, t_pre):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the shuffle follows the ReLU: ReLU(preact) is a different map, the one once handed over
    assert not torch.allclose(torch.relu(pre[1]), plain[1])


# -- 2. OFD: the teacher's BatchNorm on batch statistics -----------------------------------------

def skewed_teacher() -> nn.Module:
    """tiny_t whose running statistics are far from any batch's, so eval and train modes differ."""
    torch.manual_seed(0)
    t = build_model("tiny_t", 100)
    for bn in (m for m in t.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.fill_(0.7)
        bn.running_var.fill_(4.0)
    return t


def test_ofd_teacher_runs_batchnorm_on_batch_statistics_and_stays_frozen(data_root):
    teacher = skewed_teacher()
    reference = copy.deepcopy(teacher)
    before = copy.deepcopy(teacher.state_dict())
    run = make_run(data_root, "tiny_s", "tiny_t", [{"name": "ofd", "weight": 1e-3}],
                   teacher_model=teacher)                     # frozen once, in the cell's mode
    assert run.teacher_mode == "train" == teacher.kd_teacher_mode
    _, x, y = batch(run)
    step = run._forward(x, y, None, 0)
    with torch.no_grad():
        want, _ = reference.train().extract(x, preact=True)
        eval_mode, _ = reference.eval().extract(x, preact=True)
    for got, w, e in zip(step.t_feats[1:-1], want[1:-1], eval_mode[1:-1]):
        torch.testing.assert_close(got, w)
        assert not torch.allclose(got, e, atol=1e-3)
    assert not step.t_feats[1].requires_grad
    teacher.train(False)                                          # nobody can switch it back
    assert teacher.kd_teacher_mode == "train" and any(m.training for m in teacher.modules())
    run._epoch(None, run.make_step(None, torch.optim.SGD(run.student.parameters(), lr=0.1)), torch.Generator().manual_seed(0), 0)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher in memory changed"


def test_kd_teacher_stays_in_eval_mode(data_root):
    teacher = skewed_teacher()
    run = make_run(data_root, "tiny_s", "tiny_t", [{"name": "kd", "weight": 0.9}], teacher_model=freeze(teacher))
    assert run.teacher_mode == "eval" and not any(m.training for m in teacher.modules())


def test_methods_wanting_different_teacher_modes_are_refused(data_root):
    with pytest.raises(KDError, match="different modes"):
        make_run(data_root, "tiny_s", "tiny_t", [{"name": "ofd", "weight": 1e-3}, {"name": "at", "weight": 1000}])


def test_ofd_run_records_its_teacher_mode_and_leaves_the_checkpoint_unchanged(data_root, tmp_path):
    kw = dict(device="cpu", overrides={"epochs": 1, "batch_size": 48}, data_root=data_root, store=tmp_path / "store",
              results_dir=tmp_path, progress=False, log=lambda *a: None)
    kd_rec = run_cell(Cell("cifar100", "kd", "tiny_s", "tiny_t", "crd", terms=({"name": "kd", "weight": 1.0},)), **kw)
    ckpt = checkpoint_path(kd_rec["teacher_cell"], 0, tmp_path / "store")
    sha = sha256_file(ckpt)
    rec = run_cell(Cell("cifar100", "ofd", "tiny_s", "tiny_t", "crd", terms=({"name": "ofd", "weight": 1e-3},)), **kw)
    assert (kd_rec["teacher_mode"], rec["teacher_mode"]) == ("eval", "train")
    assert rec["teacher_checkpoint_sha256"] == sha == sha256_file(ckpt)


# -- 3. initialisation stages: only the init modules train ---------------------------------------

@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_init_stage_leaves_student_layers_outside_the_feature_modules_in_eval_mode(name, data_root):
    run = make_run(data_root, "wrn_10_2", "wrn_10_2", [{"name": name, "weight": 0.0, "init_epochs": 1}])
    (stage,) = run.stages
    student = run.student
    assert all(student.bn1 is not m for m in student.get_feat_modules().modules())   # the WRN convention
    modes = []
    student.bn1.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    before = bn_stats(student)
    opt = torch.optim.SGD(stage.params, lr=0.01)
    run._epoch(stage, run.make_step(stage, opt), torch.Generator().manual_seed(0), 0)
    after = bn_stats(student)
    assert modes and not any(modes), "the final bn1 ran in train mode during the init stage"
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("bn1."))
    assert not torch.equal(before["block1.layer.0.bn1.running_mean"], after["block1.layer.0.bn1.running_mean"])
    modes.clear()
    run._epoch(None, run.make_step(None, torch.optim.SGD(student.parameters(), lr=0.01)), torch.Generator().manual_seed(1), 0)
    assert modes and all(modes), "the main stage must run the whole student in train mode"


def test_ft_paraphraser_stage_runs_no_student_forward_and_moves_no_student_statistics(data_root):
    run = make_run(data_root, "tiny_s", "tiny_t", [{"name": "ft", "weight": 200.0, "init_epochs": 1}])
    (stage,) = run.stages
    (m,) = run.methods
    calls = []
    run.student.register_forward_pre_hook(lambda mod, a: calls.append(1))
    run.student.stem.register_forward_pre_hook(lambda mod, a: calls.append(1))
    before, enc = bn_stats(run.student), [p.detach().clone() for p in m.encoder.parameters()]
    modes = []
    m.encoder.register_forward_pre_hook(lambda mod, a: modes.append(mod.training))
    run._epoch(stage, run.make_step(stage, torch.optim.SGD(stage.params, lr=0.01)), torch.Generator().manual_seed(0), 0)
    assert not calls, "the paraphraser stage ran the student"
    after = bn_stats(run.student)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes and all(modes)
    assert any(not torch.equal(a, b) for a, b in zip(enc, m.encoder.parameters()))


# -- 4. feature kinds per method -----------------------------------------------------------------

def test_a_cell_mixing_ab_and_fitnet_hands_each_its_own_kind(data_root):
    run = make_run(data_root, "tiny_s", "tiny_t", [{"name": "ab", "weight": 1.0, "init_epochs": 0},
                                                  {"name": "fitnet", "weight": 100.0}])
    ab, fitnet = run.methods
    run.student.eval()
    _, x, y = batch(run, 4)
    with torch.no_grad():
        step = run._forward(x, y, None, 0)
        want = {(net, pre): model.extract(x, preact=pre)[0]
                for net, model in (("s", run.student), ("t", run.teacher)) for pre in (False, True)}
    for method, pre in ((ab, True), (fitnet, False)):
        got = step.select(method.kinds())
        for f, w in zip(got.s_feats, want[("s", pre)]):
            torch.testing.assert_close(f, w, rtol=0, atol=0)
        for f, w in zip(got.t_feats, want[("t", pre)]):
            torch.testing.assert_close(f, w, rtol=0, atol=0)
    # tiny nets: the stage maps of the two kinds differ (ReLU), so a mix-up would show
    assert not torch.equal(want[("s", True)][2], want[("s", False)][2])


@pytest.mark.parametrize("terms,student,teacher", [
    ([{"name": "fitnet", "weight": 100.0}], 1, 1),                        # one kind: one forward each
    ([{"name": "ofd", "weight": 1e-3}], 1, 1),
    ([{"name": "kd", "weight": 0.9}], 1, 1),                               # logits only
    ([{"name": "ab", "weight": 0.0, "init_epochs": 1}], 1, 0),             # CE only after its stage: no teacher
    ([{"name": "ab", "weight": 1.0, "init_epochs": 0}, {"name": "fitnet", "weight": 1.0}], 2, 2),  # both kinds
])
def test_each_network_runs_once_per_requested_kind_in_the_main_stage(terms, student, teacher, data_root):
    run = make_run(data_root, "tiny_s", "tiny_t", terms)
    calls = {"s": 0, "t": 0}
    run.student.stem.register_forward_pre_hook(lambda m, a: calls.__setitem__("s", calls["s"] + 1))
    run.teacher.stem.register_forward_pre_hook(lambda m, a: calls.__setitem__("t", calls["t"] + 1))
    _, x, y = batch(run, 4)
    run._forward(x, y, None, 0)
    assert (calls["s"], calls["t"]) == (student, teacher)
