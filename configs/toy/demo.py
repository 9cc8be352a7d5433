"""`make demo`: the moons pipeline sized for a 2-core CPU (a few minutes in all). Training is shorter, at batch 1 000
with larger learning rates, and the score models keep an EMA of their weights (0.99) to make up for the short run;
sampling uses 100 steps and 5 000 points per class. Everything else as configs/toy/paper.py."""
import ml_collections

from configs.toy.default_toy_configs import get_default_configs

# stage: (n_iters, batch_size, lr); the loop runs n_iters + 1 updates.
DEMO_TRAINING = {
  'score': (4000, 1000, 6.5e-4),
  'score_upper': (4000, 1000, 6.5e-4),
  'score_lower': (4000, 1000, 6.5e-4),
  'classifier_ce': (3000, 1000, 1e-4),
  'classifier_dlsm': (3000, 1000, 3e-4),
  'classifier_total': (3000, 1000, 3e-4),
}


def get_config():
  config = get_default_configs()
  for name, (n_iters, batch_size, lr) in DEMO_TRAINING.items():
    config.stages[name] = ml_collections.ConfigDict(dict(n_iters=n_iters, batch_size=batch_size, lr=lr))
  config.model.ema_rate = 0.99
  config.training.snapshot_freq = 1000
  config.training.log_freq = 500
  config.training.eval_freq = 1000
  config.sampling.num_steps = 100
  config.eval.num_samples = 5000
  return config
