"""Sampling and evaluation of the digits experiment (run_lib_sampling.py, run_lib_evaluation.py).

Features: the reference classifier (a CNN trained on the real training split), not Inception. Sampling: guided PC
(reverse diffusion + Langevin, snr 0.16) with model.num_scales steps, 50 samples per class in one round.
"""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  config.training.batch_size = 50  # samples per round
  config.sampling.conditional = True
  config.sampling.scaling_factor = 1.0
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
