"""Score model (NCSN++, VE SDE) on CIFAR-10; `--config=<this file>:vpsde` or `:subvpsde` selects the VP / sub-VP
settings of configs/default_cifar_configs.set_sde."""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler, set_sde


def get_config(sde='vesde'):
  config = get_default_configs()

  training = config.training
  training.continuous = True
  training.n_iters = 950001
  training.score_restore_path = None  # parity: the restore path is model.score_restore_path

  set_pc_sampler(config.sampling)

  config.data.dataset = 'CIFAR10'

  set_ncsnpp_model(config.model)
  return set_sde(config, sde)
