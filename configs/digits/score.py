"""Score model of the digits experiment: NCSN++ (continuous VE) at 8x8x1, trained with DSM as on CIFAR."""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  training = config.training
  training.batch_size = 96
  training.n_iters = 1500
  training.snapshot_freq = 500
  training.eval_freq = 500
  config.model.ema_rate = 0.99  # averages about the last 100 updates of a short run
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  return config
