"""The inter-twinning moons experiment of the paper, split by job:

  toy.data      the moons, the evaluation grid, exact draws of p_σ(x | y) and the PRDC reference sets
  toy.metrics   oracle scores (exact mixture scores), the distances D_P / D_L, class-wise PRDC
  toy.samplers  the annealed PC sampler (sampling.sample_pc) and the original's degenerate sampler
  toy.table     the results table (this run and the paper's numbers)
  toy.plots     score-field and sample plots

Networks live in models/toy.py, configs in configs/toy/, the pipeline in run_lib_toy.py; training goes through
run_lib / losses like the CIFAR models. Classes: 0 = upper crescent, 1 = lower crescent. A "noise-level function"
is a callable fn(x, sigma) -> [B, 2]; the toy networks are such callables.
"""
import torch

CLASS_NAMES = ('upper', 'lower')


def full_sigma(x, sigma):
  """The noise level `sigma` repeated for every row of x, in x's dtype and device."""
  return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
