"""Sampling and evaluation on CIFAR-100: NCSN++ score model guided by resnet34_cond."""
from configs.default_cifar_configs import (get_default_configs, set_ncsnpp_model, set_pc_sampler,
                                           set_class_evaluation, set_resnet_cond_classifier)


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 100  # samples per round
  training.n_iters = 1000001  # parity: read by the trainers only
  training.eval_freq = 500  # parity

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True
  sampling.scaling_factor = 1.0  # the original's int 1 was cast to the default's float 1.0, so --scale worked (B4)
  sampling.classifier_restore_path = None  # parity: the restore path is model.classifier_restore_path

  set_class_evaluation(config.eval, num_samples=60000)  # nearest_k and batch_splits were missing (B8)

  data = config.data
  data.dataset = 'CIFAR100'
  data.random_flip = False

  set_ncsnpp_model(config.model)

  set_resnet_cond_classifier(config.classifier, 'resnet34_cond', classes=100)
  return config
