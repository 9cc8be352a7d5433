"""CAS (ResNet-50 trained on generated CIFAR-10 samples, tested on real data) (spec §5.2, column A10)."""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 150
  training.n_iters = 400001
  training.eval_freq = 200

  sampling = config.sampling
  set_pc_sampler(sampling)
  sampling.conditional = True

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
  data.cas_dataset = 'samples_base_cifar10'
  data.random_flip = False

  set_ncsnpp_model(config.model)  # not read by CAS

  classifier = config.classifier
  classifier.name = 'classifier'
  classifier.model = 'resnet18_cond'  # not read by CAS (its classifier is a ResNet-50)
  classifier.nf = 32
  classifier.classes = 10
  return config
