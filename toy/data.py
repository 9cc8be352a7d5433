"""Moons data: the point sets, the evaluation grid, exact draws of p_σ(x | y) and the PRDC reference sets."""
import numpy as np
import torch

import mixture
from toy import CLASS_NAMES

MOONS_NUM_POINTS = 10000
MOONS_SCALE = 20.
MOONS_SUBSETS = {'all': None, 'upper': 0, 'lower': 1}


def moons_dataset(subset='all'):
  """sklearn's make_moons(10 000, noise 0, random_state 1), centred and scaled by 20, as the original:
  (positions float64 [N, 2], labels int64 [N]); subset 'all', 'upper' or 'lower'."""
  from sklearn.datasets import make_moons  # sklearn is only needed here
  positions, labels = make_moons(n_samples=MOONS_NUM_POINTS, noise=0.0, random_state=1)
  positions = (positions - positions.mean(axis=0)) * MOONS_SCALE
  labels = labels.astype(np.int64)
  if MOONS_SUBSETS[subset] is not None:
    keep = labels == MOONS_SUBSETS[subset]
    positions, labels = positions[keep], labels[keep]
  return positions, labels


def evaluation_grid(width=40., height=25., density=35):
  """The float32 evaluation grid [density², 2] over [-width, width] x [-height, height], x varying fastest."""
  xs = np.linspace(-width, width, density, dtype=np.float32)
  ys = np.linspace(-height, height, density, dtype=np.float32)
  return torch.from_numpy(np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2))


def exact_draws_per_class(positions, labels, sigma, num_samples, generator):
  """Samples of the true p_sigma(x | y) per class: class points drawn uniformly plus sigma·z (the oracle row)."""
  return [mixture.exact_draws(positions[labels == c], sigma, num_samples, generator) for c in range(len(CLASS_NAMES))]


def reference_sets(positions, labels, sigma, generator):
  """Real set per class for PRDC: the class's points plus sigma·z, with the same z for both classes (as the
  original)."""
  counts = [int((labels == c).sum()) for c in range(len(CLASS_NAMES))]
  z = torch.randn(max(counts), 2, generator=generator, dtype=torch.float64).numpy()
  return [positions[labels == c] + sigma * z[:counts[c]] for c in range(len(CLASS_NAMES))]
