"""Sampling and evaluation on CIFAR-100: NCSN++ score model guided by resnet34_cond (spec §5.2, column E100)."""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 100  # samples per round
  training.n_iters = 1000001
  training.eval_freq = 500

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True
  sampling.scaling_factor = 1.0  # a float, so --scale can set it (the original's int 1 crashed, B4)
  sampling.classifier_restore_path = None  # not read (the restore path is model.classifier_restore_path)

  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_samples = 60000
  evaluate.num_samples_all = 50000
  evaluate.mode = 'class'
  evaluate.class_id = 0
  evaluate.class_id_end = 1
  evaluate.batch_splits = 5  # missing in the original (B8)
  evaluate.nearest_k = 3  # missing in the original, PRDC crashed (B8)
  evaluate.freq = 5

  data = config.data
  data.dataset = 'CIFAR100'
  data.random_flip = False

  set_ncsnpp_model(config.model)

  classifier = config.classifier
  classifier.name = 'classifier'
  classifier.model = 'resnet34_cond'
  classifier.nf = 32
  classifier.classes = 100
  return config
