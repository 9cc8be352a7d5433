"""Every config file holds every field of the original's config files with its per-file value (B8, B9 fixed), the
project's extra fields, and agrees with the golden manifests' key_config and the golden vectors' flat configs."""
import json
import math

import ml_collections
import pytest
import torch
from absl import flags
from ml_collections import config_flags

from models.utils import get_device
from tests.helpers import REPO_ROOT, flatten_config, golden_form, load_config

FILES = {
    'S10': 'configs/score/cifar10_score_configs.py',
    'S100': 'configs/score/cifar100_score_configs.py',
    'C10': 'configs/classifier/cifar10_classifier_resnet18_cond_configs.py',
    'C100': 'configs/classifier/cifar100_classifier_resnet34_cond_configs.py',
    'E10': 'configs/eval/cifar10/eval_cifar10_configs.py',
    'E100': 'configs/eval/cifar100/eval_cifar100_configs.py',
    'A10': 'configs/eval/cifar10/eval_cifar10_configs_cas.py',
    'A100': 'configs/eval/cifar100/eval_cifar100_configs_cas.py',
}

# Fields this project adds (contract); the same value in every file.
EXTRAS = {
    'device': 'auto', 'data.root': 'data', 'classifier.resnet_base_width': 64, 'sampling.dtype': 'float32',
    'sampling.classifier_dtype': 'float32',
    'sampling.compile': False, 'sampling.seed': 0, 'eval.inception_dir': '', 'eval.samples_dir': '',
    'eval.cas_keep_checkpoints': 2, 'eval.cas_arch': 'resnet50', 'eval.features': 'inception', 'eval.posterior_sigmas': (0.5, 1., 2., 4.),
    'eval.posterior_draws': 4,
    'training.keep_checkpoints': 0, 'model.preconditioning': 'none', 'model.sigma_data': 0.5,
    'training.allow_tf32': False, 'sampling.ode_rtol': 1e-5, 'sampling.ode_atol': 1e-5,
    'sampling.allow_negative_scale': False, 'sampling.grid': 'linear', 'sampling.num_steps': 0, 'sampling.rho': 7.,
    'sampling.guided_sigma_min': 0., 'sampling.guided_sigma_max': math.inf,
    'sampling.heun.s_churn': 0., 'sampling.heun.s_tmin': 0., 'sampling.heun.s_tmax': math.inf,
    'sampling.heun.s_noise': 1., 'sampling.dpmpp_2m.eta': 0., 'sampling.dpmpp_2m.s_noise': 1.,
    'sampling.dpmpp_2m.second_order_below': math.inf,
    'sampling.dpmpp_3m_sde.eta': 1., 'sampling.dpmpp_3m_sde.s_noise': 1., 'sampling.unipc.order': 2,
    'sampling.unipc.variant': 'bh2', 'sampling.unipc.corrector': True,
}

DEFAULTS = {
    'training.batch_size': 128, 'training.n_iters': 1300000, 'training.snapshot_freq': 50000,
    'training.log_freq': 50, 'training.eval_freq': 100, 'training.snapshot_sampling': True,
    'training.likelihood_weighting': False, 'training.continuous': True, 'training.reduce_mean': False,
    'sampling.n_steps_each': 1, 'sampling.noise_removal': True, 'sampling.probability_flow': False,
    'sampling.snr': 0.16, 'sampling.scaling_factor': 1.0, 'sampling.conditional': False,
    'eval.begin_ckpt': 9, 'eval.end_ckpt': 26, 'eval.batch_size': 1024, 'eval.enable_sampling': False,
    'eval.num_samples': 50000, 'eval.enable_loss': True, 'eval.enable_bpd': False, 'eval.bpd_dataset': 'test',
    'data.dataset': 'CIFAR10', 'data.image_size': 32, 'data.random_flip': True, 'data.centered': False,
    'data.uniform_dequantization': False, 'data.num_channels': 3,
    'model.sigma_min': 0.01, 'model.sigma_max': 50, 'model.num_scales': 1000, 'model.beta_min': 0.1,
    'model.beta_max': 20.0, 'model.dropout': 0.1, 'model.embedding_type': 'fourier', 'model.weighting_dlsm': 0,
    'model.weighting_ce': 0, 'model.coef': 1.0, 'model.loss_type': 'total', 'model.scaling_factor': 1,
    'model.score_restore_path': None, 'model.classifier_restore_path': None,
    'optim.weight_decay': 0, 'optim.optimizer': 'Adam', 'optim.lr': 2e-4, 'optim.beta1': 0.9, 'optim.eps': 1e-8,
    'optim.warmup': 5000, 'optim.grad_clip': 1.0,
    'classifier.nf': 128, 'classifier.embedding_type': 'fourier', 'classifier.fourier_scale': 16,
    'classifier.classes': 10, 'classifier.noise_list': [0.0001, 0.3333, 0.6666, 0.9999],
    'plot.type': 'precision', 'seed': 42,
}

NCSNPP_AND_PC = {
    'training.sde': 'vesde', 'sampling.method': 'pc', 'sampling.predictor': 'reverse_diffusion',
    'sampling.corrector': 'langevin', 'model.name': 'ncsnpp', 'model.fourier_scale': 16,
    'model.scale_by_sigma': True, 'model.ema_rate': 0.999, 'model.normalization': 'GroupNorm',
    'model.nonlinearity': 'swish', 'model.nf': 128, 'model.ch_mult': (1, 2, 2, 2), 'model.num_res_blocks': 8,
    'model.attn_resolutions': (16,), 'model.resamp_with_conv': True, 'model.conditional': True, 'model.fir': True,
    'model.fir_kernel': [1, 3, 3, 1], 'model.skip_rescale': True, 'model.resblock_type': 'biggan',
    'model.progressive': 'none', 'model.progressive_input': 'residual', 'model.progressive_combine': 'sum',
    'model.attention_type': 'ddpm', 'model.init_scale': 0.0, 'model.conv_size': 3,
}

EVAL_FIELDS = {
    'eval.batch_size': 200, 'eval.num_samples': 51000, 'eval.num_samples_all': 50000, 'eval.mode': 'class',
    'eval.class_id': 0, 'eval.class_id_end': 1, 'eval.batch_splits': 5, 'eval.nearest_k': 3, 'eval.freq': 5,
    'sampling.conditional': True, 'data.random_flip': False,
}


def classifier_fields(model, classes):
  return {'classifier.name': 'classifier', 'classifier.model': model, 'classifier.nf': 32,
          'classifier.classes': classes}


SCORE = {'training.n_iters': 950001, 'training.score_restore_path': None}
CLASSIFIER = {'training.batch_size': 150, 'training.eval_freq': 500, 'sampling.conditional': True,
              'eval.batch_size': 2000, 'eval.freq': 5, 'data.random_flip': False,
              'model.score_restore_path': 'results/checkpoint.pth', 'optim.momentum': 0.9, 'optim.gamma': 0.9}
EVAL = {**EVAL_FIELDS, 'training.batch_size': 100, 'training.n_iters': 1000001, 'training.eval_freq': 500}
CAS = {**EVAL_FIELDS, 'training.batch_size': 150, 'training.n_iters': 400001, 'training.eval_freq': 200}
CIFAR100 = {'data.dataset': 'CIFAR100'}

ORIGINAL_VALUES = {  # the original's per-file values, with B8 / B9 fixed
    'S10': {**SCORE},
    'S100': {**SCORE, **CIFAR100},
    'C10': {**CLASSIFIER, 'training.n_iters': 60000, 'training.snapshot_freq': 5000, 'optim.warmup': 0,
            **classifier_fields('resnet18_cond', 10)},
    'C100': {**CLASSIFIER, 'training.n_iters': 60001, 'optim.warmup': 1000, **CIFAR100,
             **classifier_fields('resnet34_cond', 100)},
    'E10': {**EVAL, **classifier_fields('resnet18_cond', 10)},
    'E100': {**EVAL, 'eval.num_samples': 60000, 'sampling.classifier_restore_path': None, **CIFAR100,
             **classifier_fields('resnet34_cond', 100)},
    'A10': {**CAS, 'data.cas_dataset': 'samples_base_cifar10', **classifier_fields('resnet18_cond', 10)},
    'A100': {**CAS, 'data.cas_dataset': 'samples_base_cifar100', 'sampling.classifier_restore_path': None,
             **CIFAR100, **classifier_fields('resnet18_cond', 100)},
}

MANIFEST_CONFIGS = {'score_cifar10': 'S10', 'score_cifar100': 'S100', 'classifier_cifar10_resnet18_cond': 'C10',
                    'classifier_cifar100_resnet34_cond': 'C100'}
FULL_RECIPE_CONFIGS = {'score_ncsnpp_full_recipe_cifar10_ve': 'S10', 'classifier_resnet18_cond_full_recipe': 'C10'}


def typed(value):
  """Compare values with their types (an int 1 is not the float 1.0)."""
  if isinstance(value, (list, tuple)):
    return type(value), [typed(v) for v in value]
  return type(value), value


def assert_same_fields(actual, expected):
  assert sorted(actual) == sorted(expected), (sorted(set(actual) - set(expected)),
                                               sorted(set(expected) - set(actual)))
  wrong = {k: (actual[k], expected[k]) for k in expected if typed(actual[k]) != typed(expected[k])}
  assert not wrong, wrong


def test_default_config():
  from configs.default_cifar_configs import get_default_configs
  assert_same_fields(flatten_config(get_default_configs()), {**DEFAULTS, **EXTRAS})


@pytest.mark.parametrize('column', sorted(FILES))
def test_every_field_of_the_original(column):
  expected = {**DEFAULTS, **NCSNPP_AND_PC, **ORIGINAL_VALUES[column], **EXTRAS}
  assert_same_fields(flatten_config(load_config(FILES[column])), expected)


@pytest.mark.parametrize('manifest', sorted(MANIFEST_CONFIGS))
def test_manifest_key_config(golden_dir, manifest):
  with open(golden_dir / 'manifests' / f'{manifest}.json') as file:
    key_config = json.load(file)['key_config']
  flat = flatten_config(load_config(FILES[MANIFEST_CONFIGS[manifest]]))
  wrong = {k: (flat.get(k), v) for k, v in key_config.items() if typed(golden_form(flat.get(k))) != typed(v)}
  assert not wrong, wrong


@pytest.mark.parametrize('vector', sorted(FULL_RECIPE_CONFIGS))
def test_golden_vector_flat_config(golden, vector):
  """The full-recipe files were made with the original CIFAR-10 configs: every field agrees."""
  golden_flat = dict(golden(vector)['config'])
  assert golden_flat.pop('device') == 'cpu'
  flat = flatten_config(load_config(FILES[FULL_RECIPE_CONFIGS[vector]]))
  wrong = {k: (flat.get(k), v) for k, v in golden_flat.items() if typed(golden_form(flat.get(k))) != typed(v)}
  assert not wrong, wrong
  assert set(flat) - set(golden_flat) <= set(EXTRAS)


@pytest.mark.parametrize('column', ['E10', 'E100'])
def test_scale_flag_override(column):
  """--config.sampling.scaling_factor=10 (what --scale does) works with a locked config."""
  argv = ['prog', f'--config={REPO_ROOT / FILES[column]}', '--config.sampling.scaling_factor=10',
          '--config.device=cpu']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.sampling.scaling_factor == 10.0 and config.device == 'cpu'
  config.sampling.scaling_factor = 2.5  # the sampling script assigns the float --scale
  with pytest.raises(AttributeError):
    config.sampling.not_a_field = 1  # locked: misspellings fail


def test_the_originals_int_scaling_factor_became_a_float():
  """B4 was no crash: the original CIFAR-100 eval config assigned the int 1 over the default's float 1.0, which
  ml_collections casts to 1.0, so the float --scale could still be assigned."""
  from configs.default_cifar_configs import get_default_configs
  config = get_default_configs()
  config.sampling.scaling_factor = 1
  assert typed(config.sampling.scaling_factor) == (float, 1.0)
  config.sampling.scaling_factor = 10.0
  assert config.sampling.scaling_factor == 10.0
  with pytest.raises(TypeError):
    config.model.scaling_factor = 10.0  # a field created as an int does refuse a float


def test_device_is_chosen_at_run_time():
  config = ml_collections.ConfigDict({'device': 'auto'})
  assert get_device(config) == torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  config.device = 'cpu'
  assert get_device(config) == torch.device('cpu')
  config.device = 'cuda:1'
  assert get_device(config) == torch.device('cuda:1')
  assert get_device(ml_collections.ConfigDict()) == get_device(ml_collections.ConfigDict({'device': 'auto'}))
