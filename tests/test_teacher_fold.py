"""Folding the frozen teacher's BatchNorm into its convolutions (kd.engine.teacher.fold_batchnorm):
the teacher's features and logits move by float rounding only; what cannot be folded is left."""
from __future__ import annotations

import copy

import pytest
import torch

from kd.engine.teacher import build_model, fold_batchnorm, freeze

REL = 2e-5          # measured at most 4.0e-6 (relative to each tensor's largest magnitude) on these models


def _teacher(name: str, mode: str = "eval"):
    torch.manual_seed(0)
    t = freeze(build_model(name, 100), mode)
    for m in t.modules():                            # statistics as a trained network has them, not 0 and 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return t.to(memory_format=torch.channels_last)


def _outputs(t, x):
    with torch.no_grad():
        return [o for preact in (False, True) for o in (lambda f, lg: [*f, lg])(*t.extract(x, preact=preact))]


@pytest.mark.parametrize("name,folded", [("resnet56", 57), ("resnet8x4", 10), ("vgg13", 10), ("wrn_16_2", 6),
                                         ("MobileNetV2", 53), ("ShuffleV2", 56), ("tiny_t", 7)])
def test_folded_teacher_equals_unfolded_to_rounding(name, folded):
    t = _teacher(name)
    f = copy.deepcopy(t)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert fold_batchnorm(f, x[:2]) == folded
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in f.modules())
    assert bns == sum(isinstance(m, torch.nn.BatchNorm2d) for m in t.modules()) - folded
    for a, b in zip(_outputs(f, x), _outputs(t, x)):
        assert float((a - b).abs().max()) <= REL * float(b.abs().max())
    assert not any(p.requires_grad for p in f.parameters())


def test_a_conv_output_read_elsewhere_is_not_folded():
    """WRN's stem output is a returned feature and a residual input as well as the first BatchNorm's
    input, and its pre-activation BatchNorms read block sums: those stay BatchNorms."""
    f = _teacher("wrn_16_2")
    fold_batchnorm(f, torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert isinstance(f.block1.layer[0].bn1, torch.nn.BatchNorm2d) and isinstance(f.bn1, torch.nn.BatchNorm2d)
    assert isinstance(f.block1.layer[0].bn2, torch.nn.Identity)


def test_a_train_mode_teacher_is_never_folded():
    """OFD's teacher normalises with the batch's statistics: nothing to fold."""
    t = _teacher("resnet20", "train")
    assert fold_batchnorm(t, torch.randn(4, 3, 32, 32)) == 0


def test_bench_times_the_folded_teacher_beside_the_unfolded(tmp_path, capsys):
    import json

    from kd.cli import main
    assert main(["bench", "digits-sub400/kd/tiny_s_from_tiny_t/digits", "--device", "cpu", "--steps", "2", "--warmup", "1",
                 "--rounds", "1", "--fold-teacher-bn", "--results", str(tmp_path)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "speed" / "bench.jsonl").read_text().splitlines()]
    assert [x["teacher_bn_folded"] for x in lines] == [False, True]
    assert lines[1]["contender"] == "kd (eager, channels_last, teacher BN folded)"
