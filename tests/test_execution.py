"""The fast step: capture safety of every method, compiled == eager within float rounding, the
learning-rate schedule, and the execution settings recorded or refused."""
from __future__ import annotations

import copy

import pytest
import torch

import kd.methods  # noqa: F401
from kd.catalog.cells import Cell, load_recipe
from kd.errors import KDError
from kd.engine.execution import Execution, default_execution
from kd.engine.optim import lr_schedule
from kd.registry import METHODS
from kd.engine.teacher import build_model, freeze
from harness import View, member
from test_methods_common import context, make_pair, step, tiny_teacher

# Inductor fuses and reorders float32 reductions. BatchNorm's weight/bias gradients are sums that
# cancel heavily, so they differ by 1e-5 to 3e-5 relative between Inductor and eager (measured on
# tiny_s, batches of 40/16/8); six SGD steps at lr 0.05 then leave parameters up to 1.2e-5 apart
# (absolute, weights of 0.1-1). On another CPU at one thread, CRD+KD under aot_eager (its decomposed
# BatchNorm) left them 1.1e-4 apart. One real protocol change (a dropped batch, another LR) moves
# them by 1e-3 or more.
RTOL, ATOL = 1e-3, 3e-4


@pytest.mark.parametrize("name", sorted(n for n in METHODS if METHODS[n].capturable))
def test_every_capturable_method_traces_without_host_sync(name):
    """fullgraph=True fails on .item(), a Python branch on a tensor value, a data-dependent shape or
    requires_grad_ inside the step: what a CUDA graph cannot capture. Stage losses too."""
    import torch._dynamo
    s, t = make_pair(teacher=tiny_teacher(name))
    cls = METHODS[name]
    m = cls(context(s, t, cls.kinds()))
    s.train(), m.train()
    x, y, idx = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), torch.arange(8)
    losses = [lambda st: (lambda o: sum(o.values()) if isinstance(o, dict) else o)(m(st))]
    losses += [stage.loss for stage in m.stages()]
    for loss in losses:
        torch._dynamo.reset()
        f = torch.compile(lambda x, y, idx, e: loss(step(s, t, m, x, y, idx, epoch=e)), fullgraph=True, backend="eager")
        assert torch.isfinite(f(x, y, idx, torch.zeros(())))


def test_bss_is_declared_not_capturable_and_falls_back_announced():
    assert not METHODS["bss"].capturable
    said = []
    ex = Execution("compile").for_methods([object.__new__(METHODS["bss"]), object.__new__(METHODS["kd"])], said.append)
    assert ex.mode == "eager" and "BSS" in ex.fallback and len(said) == 1 and "compile" in said[0]
    assert ex.record(torch.device("cpu"))["fallback"] == ex.fallback


def test_bad_modes_are_one_line_errors():
    with pytest.raises(KDError, match="unknown execution mode 'fast'; valid: eager, compile, graph"):
        Execution("fast").check(torch.device("cpu"))
    with pytest.raises(KDError, match="needs a CUDA device"):
        Execution("graph").check(torch.device("cpu"))
    assert default_execution(torch.device("cpu")).mode == "eager"
    assert default_execution(torch.device("cuda")).mode == "eager"     # until a GPU run proves a compiled mode


def test_lr_schedule_is_pytorchs_scheduler():
    got = lr_schedule("multistep", 0.05, 8, (3, 5), 0.1)
    assert got[:3] == [0.05] * 3 and got[3] == pytest.approx(0.005) and got[5] == pytest.approx(0.0005)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    want = []
    for _ in range(6):
        want.append(opt.param_groups[0]["lr"])
        opt.step(), sch.step()
    assert lr_schedule("cosine", 0.1, 6, (), 0.1) == want          # exactly, float for float


def _run(data_root, terms, execution, ce=0.1, bs=40):
    cell = Cell("cifar100", "+".join(t["name"] for t in terms), "tiny_s", "tiny_t", "crd", ce_weight=ce, terms=terms)
    recipe = load_recipe("crd").with_overrides(batch_size=bs)
    torch.manual_seed(1)                                  # cifar100: 96 images, batches of 40, 40 and the last of 16
    teacher = freeze(build_model("tiny_t", 100))
    return View(member(cell, recipe, data_root, teacher, execution=execution))


@pytest.mark.slow
@pytest.mark.parametrize("terms,backend", [
    (({"name": "kd", "weight": 0.9, "T": 4},), "inductor"),
    (({"name": "at", "weight": 1000.0},), "aot_eager"),
    (({"name": "crd", "weight": 0.8, "nce_k": 32}, {"name": "kd", "weight": 1.0}), "aot_eager"),
], ids=["kd", "at", "crd+kd"])
def test_compiled_step_equals_eager_step(data_root, terms, backend):
    """Two epochs of steps (the last, smaller batch of each kept) through the loop's own step: the
    compiled step gives the eager step's parameters and buffers (BatchNorm statistics, CRD memory
    banks and its normalisation constants) within float rounding, and the same losses. KD compiles
    with Inductor, as `--mode compile` runs; AT and CRD+KD with aot_eager (the same traced,
    functionalised and differentiated graphs, buffer mutations included, without kernel generation,
    which costs minutes per graph on a 2-core CI machine)."""
    results = {}
    for mode in ("eager", "compile"):
        run = _run(data_root, terms, Execution(mode, channels_last=False, backend=backend), bs=40)
        opt = run._optimizer(list(run.student.parameters()) + list(run.method_modules.parameters()), 0.05)
        from kd.engine.optim import set_lr
        set_lr(opt, 0.05, run.execution.compiled, run.device)
        stepf = run.make_step(None, opt)
        losses = []
        for epoch in range(2):
            gen = torch.Generator().manual_seed(epoch)
            losses.append(run._epoch(None, stepf, gen, epoch))
        state = {**{f"s.{k}": v for k, v in run.student.state_dict().items()},
                 **{f"m.{k}": v for k, v in run.method_modules.state_dict().items()}}
        results[mode] = losses, copy.deepcopy(state)
    (le, se), (lc, sc) = results["eager"], results["compile"]
    assert lc == pytest.approx(le, rel=RTOL)
    for k, v in se.items():
        if v.is_floating_point():
            torch.testing.assert_close(sc[k], v, rtol=RTOL, atol=ATOL, msg=k)
        else:
            assert torch.equal(sc[k], v), k


@pytest.mark.slow
def test_compiled_teacher_is_frozen_and_equals_eager_to_rounding():
    """`--mode compile` runs the frozen teacher's forward through Inductor's freezing (BatchNorm on its
    running statistics folded into the convolutions): its logits and features of both kinds are the eager
    teacher's to float rounding, a second teacher of the same architecture gets its own weights (not the
    first one's constants), and the result line says how the teacher ran."""
    from torch._dynamo.utils import counters

    from kd.engine.distiller import Distiller

    class Holder:                                    # what Distiller.teacher_forward reads
        teacher_forward = Distiller.teacher_forward

        def __init__(self, teacher):
            self.teacher, self.channels_last, self.amp = teacher, False, False

    def teacher(seed):
        torch.manual_seed(seed)
        t = freeze(build_model("tiny_t", 100))
        for m in t.modules():                        # statistics as a trained network has them, not 0 and 1
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        return Holder(t)

    def flat(out):
        return [v for feats in out[0].values() for v in feats] + [out[1]]
    x = torch.randn(16, 3, 32, 32)
    counters["inductor"].clear()
    for seed in (0, 1):
        h = teacher(seed)
        compiled = Execution("compile").wrap_teacher(h.teacher_forward)
        ref, out = flat(h.teacher_forward(x, (False, True))), flat(compiled(x, (False, True)))
        assert len(out) == len(ref) == 11
        for a, b in zip(out, ref):
            assert not a.requires_grad and float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
    assert counters["inductor"]["binary_folding_conv"] >= 7          # tiny_t's BatchNorms went into its convs
    assert Execution("compile").record(torch.device("cpu"))["teacher"] == "compiled, frozen"
    assert "teacher" not in Execution("eager").record(torch.device("cpu"))
    assert "teacher" not in Execution("compile").record(torch.device("cpu"), teacher=False)
    assert Execution("eager").wrap_teacher(h.teacher_forward) == h.teacher_forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["compile", "graph"])
def test_cuda_modes_equal_eager(data_root, mode):
    """On a GPU: the graphed step (CUDA graphs through Inductor) equals the eager step, KD and CRD."""
    terms = ({"name": "crd", "weight": 0.8, "nce_k": 32}, {"name": "kd", "weight": 1.0})
    out = {}
    for m in ("eager", mode):
        cell = Cell("cifar100", "crd+kd", "tiny_s", "tiny_t", "crd", ce_weight=0.1, terms=terms)
        torch.manual_seed(1)
        run = View(member(cell, load_recipe("crd").with_overrides(batch_size=40), data_root,
                          freeze(build_model("tiny_t", 100).cuda()), device=torch.device("cuda"), execution=Execution(m)))
        opt = run._optimizer(list(run.student.parameters()) + list(run.method_modules.parameters()), 0.05)
        from kd.engine.optim import set_lr
        set_lr(opt, 0.05, run.execution.compiled, run.device)
        stepf = run.make_step(None, opt)
        for epoch in range(2):
            run._epoch(None, stepf, torch.Generator(device="cuda").manual_seed(epoch), epoch)
        out[m] = {k: v.detach().cpu() for k, v in run.student.state_dict().items()}
    for k, v in out["eager"].items():
        torch.testing.assert_close(out[mode][k], v, rtol=1e-3, atol=1e-4, msg=k)   # TF32 convs both ways


def test_bf16_is_a_recipe_tier_with_its_own_id():
    r = load_recipe("crd")
    bf = r.with_overrides(precision="bf16")
    assert bf.amp and bf.id == "crd~precision=bf16" and not r.amp
    assert r.with_overrides(precision="fp32") is r                 # the recipe's own precision: same id
    with pytest.raises(KDError, match="precision = 'fp16': must be fp32 or bf16"):
        r.with_overrides(precision="fp16")


def test_more_compiled_runs_than_the_recompile_limit_finish_compiled_or_fail_loudly(data_root, tmp_path, monkeypatch):
    """Each run compiles its own frames; the engine drops them after every finished group, so a process may
    compile any number of runs and every line saying `compile` was compiled. Without the reset the limit is
    reached, and that is one error line, never a run recorded as compiled that ran eagerly."""
    from kd.catalog.spec import RunSpec
    from kd.engine import Env, execution, run
    monkeypatch.setattr(execution, "RECOMPILE_LIMIT", 2)
    monkeypatch.setattr(execution, "FRAMES_PER_RUN", 2)
    cell = Cell("cifar100", "kd", "tiny_s", "tiny_t", "crd", ce_weight=0.1, terms=({"name": "kd", "weight": 0.9},))
    ov = {"epochs": 1, "batch_size": 48}                       # 96 images: one batch shape
    env = Env(data_root, tmp_path / "s", tmp_path / "r", "cpu", Execution("compile", False, backend="aot_eager"),
              progress=False, log=lambda *a: None)
    recs, errors = run([RunSpec.of(cell, s, ov) for s in (0, 1, 2)], env, group=False)   # + the teacher's run
    assert not errors and len(recs) == 4
    assert all(r["execution"]["mode"] == "compile" and r["execution"]["fallback"] is None for r in recs)
    monkeypatch.setattr(execution, "reset_compiler", lambda: None)      # frames kept: the limit is reached
    with pytest.raises(KDError, match="recompile limit"):
        run([RunSpec.of(cell, s, ov) for s in (3, 4, 5)], env, group=False)


@pytest.mark.slow
def test_grouped_equals_one_by_one_under_inductor(data_root, tmp_path):
    """A lone run takes the group's path (the teacher's forward outside the compiled step, once per batch),
    so both compile the same graphs: under Inductor too, grouped KD equals KD alone, checkpoint for checkpoint."""
    from kd.catalog.spec import RunSpec
    from kd.engine import Env, run
    from kd.records.results import read_records
    kd_cell = Cell("cifar100", "kd", "tiny_s", "tiny_t", "crd", ce_weight=0.1, terms=({"name": "kd", "weight": 0.9},))
    base = Cell("cifar100", "baseline", "tiny_s", None, "crd")
    specs = [RunSpec.of(c, 0, {"epochs": 1, "batch_size": 48}) for c in (kd_cell, base)]
    out = {}
    for group in (False, True):
        env = Env(data_root, tmp_path / "s", tmp_path / f"r{group}", "cpu", Execution("compile", False),
                  progress=False, log=lambda *a: None)
        run(specs, env, group=group)
        out[group] = {r["cell_id"]: (r["curve"], r["checkpoint_sha256"]) for r in read_records(tmp_path / f"r{group}")
                      if r["student"] == "tiny_s"}
    assert len(out[True]) == 2 and out[True] == out[False]
