"""Defaults of the digits experiment (`make digits`): the CIFAR defaults resized for scikit-learn's 8x8 grey digits.

Same fields and scripts as CIFAR; what changes is the size: 8x8x1 images, a small NCSN++ and resnet18_cond, short
training, fewer sampling steps and samples. Every digits config starts here.
"""
from configs.default_cifar_configs import get_default_configs, set_ncsnpp_model, set_pc_sampler


def get_digits_configs():
  config = get_default_configs()
  config.training.sde = 'vesde'
  config.training.continuous = True
  config.training.snapshot_sampling = False  # no unconditional snapshot samples during the short runs
  set_pc_sampler(config.sampling)
  set_digits_data(config.data)
  set_digits_ncsnpp(config.model)
  set_digits_classifier(config.classifier)
  return config


def set_digits_data(data):
  data.dataset = 'digits'
  data.image_size = 8  # the data set's native size: nothing is interpolated
  data.num_channels = 1
  data.random_flip = False  # a flipped digit is another symbol


def set_digits_ncsnpp(model):
  """NCSN++ (continuous VE, the CIFAR flags) at 8x8x1: nf 16, two resolutions, one block each, EDM-preconditioned."""
  set_ncsnpp_model(model)
  # the score -x/(σ² + σ_d²) + σ_d·F(...)/(σ·√(σ² + σ_d²)): without it the network's output has the same size for
  # every noise draw (GroupNorm ends it), while in 64 dimensions the noise's norm spreads by 8.8 %, and the
  # probability-flow ODE keeps that error (docs/digits.md, the score model and a deterministic sampler)
  model.preconditioning = 'edm'
  model.sigma_data = 0.5  # the RMS of x - 0.5 over the training digits is 0.48
  model.nf = 16
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.sigma_max = 5  # about the largest distance between two training digits in [0, 1] units (4.8)
  model.num_scales = 40  # the σ table; PC steps when sampling.num_steps is 0 (eval.py samples with its own grid)
  model.dropout = 0.


def set_digits_classifier(classifier):
  classifier.name = 'classifier'
  classifier.model = 'resnet18_cond'
  classifier.nf = 32
  classifier.classes = 10
  classifier.resnet_base_width = 8
