"""Sampling and evaluation of the digits experiment (run_lib_sampling.py, run_lib_evaluation.py).

Features: the reference classifier (a CNN trained on the real training split), not Inception. Sampling: guided
stochastic Heun with churn on the ρ grid (100 steps, 199 network evaluations), 50 samples per class in one round.
With one total-loss classifier (seed 0) its samples were recognised in 0.83 of cases, those of 50 churned steps in
0.78 and of guided PC with 40 steps (80 evaluations) in 0.44; benchmarks/bench_sampler_nfe.py --digits measures every
sampler side by side.
"""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  config.training.batch_size = 50  # samples per round
  config.sampling.conditional = True
  config.sampling.scaling_factor = 1.0
  sampling = config.sampling
  sampling.predictor, sampling.corrector = 'heun_churn', 'none'
  sampling.grid, sampling.num_steps = 'rho', 100
  sampling.S_churn = 50.  # γ = min(S_churn / num_steps, √2 − 1) = √2 − 1: the most churn, at every step
  evaluate = config.eval
  evaluate.num_samples = 500  # 50 per class, one round
  evaluate.batch_size = 500
  evaluate.nearest_k = 3
  evaluate.scaling_baseline = 10.  # λ of the scaled-CE baseline, as on CIFAR
  evaluate.features = 'reference_classifier'
  evaluate.reference_classifier = 'results/digits_reference/reference_classifier.pth'
  evaluate.reference_steps = 1000
  evaluate.reference_seed = 0
  return config
