"""What every CIFAR model of the zoo shares: forward() is the logits of extract(), and the stage
channels come from the `stage_channels` attribute each model sets."""
from __future__ import annotations

from torch import nn


class FeatureNet(nn.Module):
    stage_channels: list[int]

    def forward(self, x):
        return self.extract(x)[1]

    def get_stage_channels(self) -> list[int]:
        return list(self.stage_channels)
