"""Sampling and evaluation on CIFAR-10: NCSN++ score model guided by resnet18_cond, as the original;
`--config=<this file>:vpsde` or `:subvpsde` samples VP / sub-VP models (default_cifar_configs.set_sde)."""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler, set_sde


def get_config(sde='vesde'):
  config = get_default_configs()

  training = config.training
  training.continuous = True
  training.batch_size = 100  # samples per round
  training.n_iters = 1000001
  training.eval_freq = 500

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True
  sampling.scaling_factor = 1.0

  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_samples = 51000
  evaluate.num_samples_all = 50000
  evaluate.mode = 'class'
  evaluate.class_id = 0
  evaluate.class_id_end = 1
  evaluate.batch_splits = 5
  evaluate.nearest_k = 3
  evaluate.freq = 5

  data = config.data
  data.dataset = 'CIFAR10'
  data.random_flip = False

  set_ncsnpp_model(config.model)

  classifier = config.classifier
  classifier.name = 'classifier'
  classifier.model = 'resnet18_cond'
  classifier.nf = 32
  classifier.classes = 10
  return set_sde(config, sde)
