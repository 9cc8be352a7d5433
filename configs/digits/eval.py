"""Sampling and evaluation of the digits experiment (run_lib_sampling.py, run_lib_evaluation.py).

Features: the reference classifier (a CNN trained on the real training split), not Inception. Sampling: guided
SDE-DPM-Solver++(2M) (sampling.method = 'dpmpp_2m') on the ρ grid, 100 steps (100 network evaluations) with η = 10,
ten times the reverse SDE's Langevin mixing, 50 samples per class in one round. benchmarks/bench_sampler_nfe.py
--digits measures every sampler side by side (docs/samplers.md): with the total-loss classifier of seed 0 (250
samples, 3 sampling seeds) these samples were recognised in 0.887 ± 0.015 of cases at an FD of 15, as with guided PC
at 2 000 evaluations (0.896 ± 0.014, FD 15); with that of seed 1, 0.847 against PC's 0.843. At 20 evaluations every
setting tried stops at 0.81-0.83 (seed 0), and the deterministic solvers at 0.57.
"""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  config.training.batch_size = 50  # samples per round
  config.sampling.conditional = True
  config.sampling.scaling_factor = 1.0
  sampling = config.sampling
  sampling.method = 'dpmpp_2m'
  sampling.grid, sampling.num_steps = 'rho', 100
  sampling.dpmpp_2m.eta = 10.  # the SDE form with 10× the reverse SDE's Langevin mixing
  evaluate = config.eval
  evaluate.num_samples = 500  # 50 per class, one round
  evaluate.batch_size = 500
  evaluate.nearest_k = 3
  evaluate.scaling_baseline = 10.  # λ of the scaled-CE baseline, as on CIFAR
  evaluate.features = 'reference_classifier'
  evaluate.reference_classifier = 'results/digits_reference/reference_classifier.pth'
  evaluate.reference_steps = 1000
  evaluate.reference_seed = 0
  evaluate.posterior_sigmas = (0.2, 0.5, 1., 1.5, 2., 4.)
  return config
