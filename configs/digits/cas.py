"""CAS of the digits experiment (run_lib_cas.py): the reference CNN architecture trained only on the samples
(Adam 1e-3, batch 100, 601 updates), tested on the real test split."""
from configs.digits import eval as digits_eval


def get_config():
  config = digits_eval.get_config()
  training = config.training
  training.batch_size = 100
  training.n_iters = 601
  training.eval_freq = 200
  config.eval.cas_arch = 'digits_cnn'
  config.eval.cas_keep_checkpoints = 1
  config.optim.lr = 1e-3
  config.optim.warmup = 0
  return config
