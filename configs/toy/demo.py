"""`make demo`: the moons pipeline sized for a 2-core CPU (< 10 min in all): shorter training at batch 1 000 with
larger learning rates, 200-step sampling of 5 000 points per class. Everything else as configs/toy/paper.py."""
import ml_collections

from configs.toy.default_toy_configs import get_default_configs

# stage: (n_iters, batch_size, lr); the loop runs n_iters + 1 updates.
DEMO_TRAINING = {
  'score': (3000, 1000, 6.5e-4),
  'score_upper': (3000, 1000, 6.5e-4),
  'score_lower': (3000, 1000, 6.5e-4),
  'classifier_ce': (3000, 1000, 1e-4),
  'classifier_dlsm': (3000, 1000, 1e-4),
  'classifier_total': (3000, 1000, 1e-4),
}


def get_config():
  config = get_default_configs()
  for name, (n_iters, batch_size, lr) in DEMO_TRAINING.items():
    config.stages[name] = ml_collections.ConfigDict(dict(n_iters=n_iters, batch_size=batch_size, lr=lr))
  config.training.snapshot_freq = 1000
  config.training.log_freq = 100
  config.training.eval_freq = 1000
  config.sampling.num_steps = 200
  config.eval.num_samples = 5000
  return config
