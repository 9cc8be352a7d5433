"""The classifier objectives as registered classes: built once from config.model, a new one is one class (the
README's example), and a wrong name or a missing field is refused before training."""
import pytest
import torch
import torch.nn.functional as F

import config_checks
import losses
import sde_lib
from tests.helpers import load_config

CLASSIFIER_CONFIG = 'configs/classifier/cifar10_classifier_resnet18_cond_configs.py'


class FirstLogits(torch.nn.Module):
  """A 'classifier' whose logits are the first three input features (time ignored)."""

  def forward(self, x, t):
    return x[:, :3]


def test_the_three_objectives_are_registered_with_their_hyperparameters():
  settings = {'loss_type': 'total', 'weighting_dlsm': 2, 'weighting_ce': 1, 'coef': 0.5}
  total = losses.get_classifier_objective(settings, sde_lib.VESDE(), eps=0.)
  assert isinstance(total, losses.TotalObjective)
  assert (total.weighting_dlsm, total.weighting_ce, total.coef) == (2, 1, .5)
  ce = losses.get_classifier_objective(dict(settings, loss_type='ce'), sde_lib.VPSDE())
  assert isinstance(ce, losses.CrossEntropyObjective) and ce.weighting_ce == 1 and ce.eps == 1e-3  # VP sampling eps
  assert set(losses.CLASSIFIER_OBJECTIVES) >= {'ce', 'dlsm', 'total'}


def test_total_is_dlsm_plus_coef_times_ce():
  sde, batch, labels = sde_lib.VESDE(), torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
  score_model = torch.nn.Module()
  score_model.forward = lambda x, sigma: -x / sigma[:, None] ** 2
  values = {}
  for name in ('ce', 'dlsm', 'total'):
    objective = losses.get_classifier_objective({'loss_type': name, 'weighting_dlsm': 1, 'weighting_ce': 0,
                                                 'coef': 0.25}, sde, eps=1e-2)
    torch.manual_seed(0)
    values[name] = objective(FirstLogits(), score_model, batch, labels).item()
  assert values['total'] == pytest.approx(values['dlsm'] + 0.25 * values['ce'], rel=1e-6)


def test_a_new_objective_is_one_registered_class():
  @losses.register_objective('smooth_ce')
  class SmoothedCrossEntropy(losses.ClassifierObjective):
    uses_score = False

    def __init__(self, sde, eps=None, train=True, *, smoothing=0.1):
      super().__init__(sde, eps, train)
      self.smoothing = smoothing

    def loss(self, logits, x, labels, prior_score, z, std):
      return F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
  try:
    objective = losses.get_classifier_objective({'loss_type': 'smooth_ce', 'smoothing': 0.2}, sde_lib.VESDE())
    assert objective.smoothing == 0.2
    loss = objective(FirstLogits(), None, torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(loss)
  finally:
    del losses.CLASSIFIER_OBJECTIVES['smooth_ce']


def test_a_missing_hyperparameter_is_named():
  with pytest.raises(ValueError, match="model.loss_type='total' needs model.weighting_ce, model.coef"):
    losses.get_classifier_objective({'loss_type': 'total', 'weighting_dlsm': 0}, sde_lib.VESDE())


def test_config_checks_build_the_objective():
  config = load_config(CLASSIFIER_CONFIG)
  config_checks.check_classifier_objective(config)
  config.model.loss_type = 'mse'
  with pytest.raises(config_checks.ConfigError, match="model.loss_type='mse': must be one of 'ce', 'dlsm', 'total'"):
    config_checks.check_training(config, 'classifier')


def test_registering_a_taken_name_is_refused():
  with pytest.raises(ValueError, match="'ce' is already registered"):
    losses.register_objective('ce')(type('Other', (losses.ClassifierObjective,), {}))
