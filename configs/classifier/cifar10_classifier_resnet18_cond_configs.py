"""Time-conditioned resnet18_cond classifier on CIFAR-10, trained with the DLSM total loss; `--config=<this file>:vpsde`
or `:subvpsde` pairs it with the VP / sub-VP score model (default_cifar_configs.set_sde)."""
from configs.default_cifar_configs import (get_default_configs, set_ncsnpp_model, set_pc_sampler, set_sde,
                                           set_resnet_cond_classifier)


def get_config(sde='vesde'):
  config = get_default_configs()

  training = config.training
  training.continuous = True
  training.batch_size = 150
  training.n_iters = 60000
  training.snapshot_freq = 5000
  training.eval_freq = 500

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True

  evaluate = config.eval
  evaluate.batch_size = 2000
  evaluate.freq = 5  # parity

  data = config.data
  data.dataset = 'CIFAR10'
  data.random_flip = False

  model = config.model
  set_ncsnpp_model(model)
  model.score_restore_path = 'results/checkpoint.pth'  # used when --restore is not given (B2)

  optim = config.optim
  optim.warmup = 0
  optim.momentum = 0.9  # read only with optim.optimizer = 'SGD'
  optim.gamma = 0.9  # parity

  set_resnet_cond_classifier(config.classifier, 'resnet18_cond', classes=10)
  return set_sde(config, sde)
