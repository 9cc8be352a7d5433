"""Sampling and evaluation on CIFAR-10: NCSN++ score model guided by resnet18_cond; `--config=<this file>:vpsde` or
`:subvpsde` samples VP / sub-VP models (default_cifar_configs.set_sde)."""
from configs.default_cifar_configs import (get_default_configs, set_ncsnpp_model, set_pc_sampler, set_sde,
                                           set_class_evaluation, set_resnet_cond_classifier)


def get_config(sde='vesde'):
  config = get_default_configs()

  training = config.training
  training.continuous = True
  training.batch_size = 100  # samples per round
  training.n_iters = 1000001  # parity: read by the trainers only
  training.eval_freq = 500  # parity

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True
  sampling.scaling_factor = 1.0

  set_class_evaluation(config.eval)

  data = config.data
  data.dataset = 'CIFAR10'
  data.random_flip = False

  set_ncsnpp_model(config.model)

  set_resnet_cond_classifier(config.classifier, 'resnet18_cond', classes=10)
  return set_sde(config, sde)
