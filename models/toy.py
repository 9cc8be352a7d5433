"""Noise-conditioned MLPs of the moons experiment: a score network and a classifier.

Both map (x [B,2], sigma [B]) to 2 outputs: the score itself for 'toy_score' (no division by sigma),
the logits for 'toy_classifier'. The raw sigma enters a small MLP whose features are concatenated with
those of x, so sigma only shifts the output additively (as in the original). PyTorch default init:
`torch.manual_seed(s)` followed by construction reproduces the original weights bit for bit.
"""
import torch
from torch import nn

from models.utils import register_model


class NoiseConditionedMLP(nn.Module):
  """x-branch 2 -> 16nf -> 8nf -> 4nf, sigma-branch 1 -> 4nf -> 2nf -> nf, head 5nf -> num_outputs."""

  def __init__(self, nf, num_outputs):
    super().__init__()
    # Construction order fixes the RNG stream of the default init: layers, cond_layers, linear.
    self.layers = nn.Sequential(
        nn.Flatten(),
        nn.Linear(2, 16 * nf), nn.ReLU(),
        nn.Linear(16 * nf, 8 * nf), nn.ReLU(),
        nn.Linear(8 * nf, 4 * nf))
    self.cond_layers = nn.Sequential(
        nn.Linear(1, 4 * nf), nn.ReLU(),
        nn.Linear(4 * nf, 2 * nf), nn.ReLU(),
        nn.Linear(2 * nf, nf))
    self.linear = nn.Linear(5 * nf, num_outputs)

  def forward(self, x, sigma):
    sigma = sigma.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
    return self.linear(torch.cat([self.layers(x), self.cond_layers(sigma)], dim=1))


@register_model('toy_score')
class ToyScore(NoiseConditionedMLP):
  """Score network s(x, sigma) of the moons (config.model.nf)."""

  def __init__(self, config):
    super().__init__(config.model.nf, 2)


@register_model('toy_classifier')
class ToyClassifier(NoiseConditionedMLP):
  """Noise-conditioned classifier f(x, sigma) -> logits (config.classifier.nf, config.classifier.classes)."""

  def __init__(self, config):
    super().__init__(config.classifier.nf, config.classifier.classes)
