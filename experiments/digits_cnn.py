"""A small CNN for scikit-learn's 8x8 digits, as a person would write their own model.

Used by experiments/digits_cnn.json through "model": {"class_path": "digits_cnn:Net"}:
runner finds this file beside the experiment, builds Net(**init_args) per trial and
trains it with every babysitting feature (live nudges, rollback, exact resume).
"""

import torch.nn as nn


class Net(nn.Module):
    def __init__(self, channels: int = 16, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classify = nn.Linear(2 * channels * 4 * 4, n_classes)

    def forward(self, x):  # x: (batch, 1, 8, 8)
        return self.classify(self.features(x).flatten(1))
