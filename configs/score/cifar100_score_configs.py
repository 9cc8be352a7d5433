"""Score model (NCSN++, VE SDE) on CIFAR-100."""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.n_iters = 950001
  training.score_restore_path = None  # parity: the restore path is model.score_restore_path

  set_pc_sampler(config.sampling)

  config.data.dataset = 'CIFAR100'

  set_ncsnpp_model(config.model)
  return config
