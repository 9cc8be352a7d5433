"""The reference classifier of the digits experiment: a small CNN whose penultimate layer is the feature space of
the digits metrics (Fréchet distance, PRDC), as Inception's pool_3 is on CIFAR, and whose logits say which digit a
sample shows. The same architecture serves as the CAS network on digits (`eval.cas_arch = 'digits_cnn'`).
"""
import torch.nn as nn

FEATURE_DIM = 32


class DigitsCNN(nn.Module):
  """conv 32 -> conv 64 -> pool -> conv 64 -> pool -> 32-d features -> logits; for 8x8 (or larger) inputs in [0, 1]."""

  def __init__(self, num_channels=1, num_classes=10, feature_dim=FEATURE_DIM):
    super().__init__()
    self.body = nn.Sequential(
        nn.Conv2d(num_channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4, feature_dim), nn.ReLU())
    self.head = nn.Linear(feature_dim, num_classes)

  def features(self, x):
    return self.body(x)

  def forward(self, x):
    return self.head(self.body(x))
