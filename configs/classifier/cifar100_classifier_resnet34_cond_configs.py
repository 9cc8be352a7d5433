"""Time-conditioned resnet34_cond classifier on CIFAR-100, trained with the DLSM total loss."""
from configs.default_cifar_configs import (get_default_configs, set_ncsnpp_model, set_pc_sampler,
                                           set_resnet_cond_classifier)


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 150
  training.n_iters = 60001
  training.snapshot_freq = 50000
  training.eval_freq = 500

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True

  evaluate = config.eval
  evaluate.batch_size = 2000
  evaluate.freq = 5  # parity

  data = config.data
  data.dataset = 'CIFAR100'
  data.random_flip = False

  model = config.model
  set_ncsnpp_model(model)
  model.score_restore_path = 'results/checkpoint.pth'  # used when --restore is not given (B2)

  optim = config.optim
  # With the step counter fixed (B1) this is a real 1000-step warm-up; the original's lr stayed 0.
  optim.warmup = 1000
  optim.momentum = 0.9  # read only with optim.optimizer = 'SGD'
  optim.gamma = 0.9  # parity

  set_resnet_cond_classifier(config.classifier, 'resnet34_cond', classes=100)
  return config
