"""Shared fixtures: golden files, the full-size NCSN++ (built once), and small golden models."""
import copy
import functools
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, config_from_flat, load_config

FULL_SCORE_CONFIG = 'configs/score/cifar10_score_configs.py'


def resolve_golden_dir():
  """DLSM_GOLDEN_DIR, else ../shared/golden next to the repository, else the copy in tests/golden."""
  if os.environ.get('DLSM_GOLDEN_DIR'):
    return Path(os.environ['DLSM_GOLDEN_DIR'])
  shared = REPO_ROOT.parent / 'shared' / 'golden'
  return shared if shared.is_dir() else REPO_ROOT / 'tests' / 'golden'


@pytest.fixture(scope='session')
def golden_dir():
  return resolve_golden_dir()


@functools.lru_cache(maxsize=None)
def _load_golden(path):
  return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='session')
def golden(golden_dir):
  """golden('score_ncsnpp_small_ve') -> the vectors/<name>.pt dict (cached: treat it as read-only)."""

  def load(name):
    name = name if name.endswith('.pt') else f'{name}.pt'
    return _load_golden(str(golden_dir / 'vectors' / name))

  return load


@pytest.fixture(scope='session')
def full_ncsnpp_cifar10():
  """NCSN++ built from the CIFAR-10 score config on CPU, in eval mode (107.6M parameters; built once).

  Shared by the whole session: load weights into it as needed, but do not train it.
  """
  from models.utils import create_model
  config = load_config(FULL_SCORE_CONFIG)
  config.device = 'cpu'
  torch.manual_seed(0)
  return create_model(config).eval()


def _golden_model(record, build):
  from models.checkpoint import load_model_state
  config = config_from_flat(record['config'])
  config.device = 'cpu'
  model = build(config)
  load_model_state(model, record['state_dict'], what='golden', config_hint='golden flat config')
  return model.eval()


@pytest.fixture(scope='session')
def _small_models(golden):
  from models.utils import create_classifier, create_model
  return {
      've': _golden_model(golden('score_ncsnpp_small_ve'), create_model),
      'vp': _golden_model(golden('score_ncsnpp_small_vp'), create_model),
      'classifier': _golden_model(golden('classifier_resnet18_cond_small'), create_classifier),
  }


@pytest.fixture
def small_score_model_ve(_small_models):
  """The small VE NCSN++ of score_ncsnpp_small_ve.pt with its stored weights (a fresh copy per test)."""
  return copy.deepcopy(_small_models['ve'])


@pytest.fixture
def small_score_model_vp(_small_models):
  """The small VP NCSN++ (positional embedding, centred data) of score_ncsnpp_small_vp.pt (fresh copy)."""
  return copy.deepcopy(_small_models['vp'])


@pytest.fixture
def small_classifier(_small_models):
  """The resnet18_cond (base width 8) of classifier_resnet18_cond_small.pt (fresh copy: BN stats may move)."""
  return copy.deepcopy(_small_models['classifier'])
