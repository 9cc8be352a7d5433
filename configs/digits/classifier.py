"""Classifier of the digits experiment (shared by the three losses): resnet18_cond, base width 8, at 8x8x1.

The width is classifier.resnet_base_width in default_digits_configs.py.

classifier_ce.py, classifier_dlsm.py and classifier_total.py only set model.loss_type.
"""
from configs.digits.default_digits_configs import get_digits_configs


def get_classifier_config(loss_type):
  config = get_digits_configs()
  training = config.training
  training.batch_size = 96
  training.n_iters = 2000  # recognised (total loss, seed 0): 0.75 after 1 200 updates, 0.83 after 2 000
  training.snapshot_freq = 1000
  training.eval_freq = 500
  config.eval.batch_size = 256  # test-accuracy batches (full batches only; the test split has 359 images)
  config.model.loss_type = loss_type  # 'ce', 'dlsm' or 'total' (DLSM + coef * CE, the paper's "ours")
  # The paper's toy recipe: the DLSM residual weighted by σ⁴ (weighting_dlsm = 2) and CE at 1/8 beside it. Against the
  # exact posterior scores (σ 1-4, seed 0, benchmarks/bench_dlsm_recipes.py) it is the only recipe tried whose guidance
  # makes the conditional score better than the unguided one; CIFAR's (0, coef 1) and σ² (1, coef 1) make it worse,
  # as CE alone does: the unweighted residual is dominated by the pure-noise z/σ terms of the smallest σ (up to 100)
  config.model.weighting_dlsm = 2
  config.model.coef = 0.125
  config.optim.lr = 1e-3
  config.optim.warmup = 0
  config.model.score_restore_path = None  # --restore gives the score checkpoint
  return config
