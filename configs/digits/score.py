"""Score model of the digits experiment: NCSN++ (continuous VE) at 8x8x1, trained with DSM as on CIFAR."""
from configs.digits.default_digits_configs import get_digits_configs


def get_config():
  config = get_digits_configs()
  training = config.training
  training.batch_size = 128
  training.n_iters = 2000
  training.snapshot_freq = 500
  training.eval_freq = 500
  config.model.ema_rate = 0.995  # averages about the last 200 updates of a short run
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  return config
