"""Score model of the digits experiment: NCSN++ (continuous VE) at 8x8x1, trained with DSM as on CIFAR."""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  training = config.training
  training.batch_size = 96
  # 8 000 updates (8.4 min on one AMD EPYC thread): the guided probability-flow samples (20 steps) reach a pixel FD
  # of 0.74 against 1.09 after 2 000 and 0.93 after 4 000 (real test digits: 0.089); nf 32 for 3 000 updates, the
  # same time, gave 0.88 (benchmarks/bench_digits_prior.py, seed 0)
  training.n_iters = 8000
  training.snapshot_freq = 2000
  training.eval_freq = 1000
  config.model.ema_rate = 0.999  # averages about the last 1 000 updates
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  return config
