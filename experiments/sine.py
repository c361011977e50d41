"""Regression on your own arrays: predict the next value of a noisy sine wave from the last 32.

Used by experiments/sine_regression.json: "data" calls ``load`` (a ``python`` data source:
any function returning ``(x, y)`` or ``(x, y, x_val, y_val)`` as NumPy arrays or tensors)
and "model" names ``Net`` by its ``class_path``.
"""

import numpy as np
import torch.nn as nn


def load(n: int = 2000, window: int = 32, noise: float = 0.05, seed: int = 0):
    """``n`` windows of a sine with random frequency and phase: x (n, 1, window), y (n,)."""
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.05, 0.3, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    t = np.arange(window + 1)
    wave = np.sin(frequency * t + phase) + noise * rng.normal(size=(n, window + 1))
    return wave[:, None, :window], wave[:, window]


class Net(nn.Module):
    def __init__(self, channels: int = 16, window: int = 32):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * window, 1),
        )

    def forward(self, x):  # x: (batch, 1, window) -> (batch, 1)
        return self.layers(x)
