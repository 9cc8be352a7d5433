"""CAS (ResNet-50 trained on generated CIFAR-10 samples, tested on real data)."""
from configs.default_cifar_configs import (get_default_configs, set_ncsnpp_model, set_pc_sampler,
                                           set_class_evaluation, set_resnet_cond_classifier)


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 150
  training.n_iters = 400001
  training.eval_freq = 200

  sampling = config.sampling  # parity: CAS does not sample
  set_pc_sampler(sampling)
  sampling.conditional = True

  set_class_evaluation(config.eval)

  data = config.data
  data.dataset = 'CIFAR10'
  data.cas_dataset = 'samples_base_cifar10'  # parity: the sample folder is --samples_dir (B10)
  data.random_flip = False

  set_ncsnpp_model(config.model)  # parity: not read by CAS

  set_resnet_cond_classifier(config.classifier, 'resnet18_cond', classes=10)  # CAS reads only classes
  return config
