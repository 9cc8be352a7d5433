"""losses.py against the original's golden losses (CIFAR NCSN++ / resnet18_cond small models and the toy MLPs)."""
import copy

import ml_collections
import pytest
import torch

import losses
import sde_lib
from models import utils as mutils
from tests.helpers import assert_close_to_golden

CLASSIFIER_CASES = ('total_wdlsm0_wce0_coef1', 'dlsm_wdlsm0_wce0_coef1', 'ce_wdlsm0_wce0_coef1',
                    'total_wdlsm2_wce1_coef0.5')
TOY_CLASSIFIER_CASES = ('ce', 'dlsm', 'total_coef1', 'total_coef0.125')


def sde_from_record(record):
  kind = record['type']
  options = {key: value for key, value in record.items() if key != 'type'}
  return {'VESDE': sde_lib.VESDE, 'VPSDE': sde_lib.VPSDE, 'subVPSDE': sde_lib.subVPSDE}[kind](**options)


def assert_loss(actual, expected, rtol=1e-4):
  actual = float(torch.as_tensor(actual).detach())
  assert abs(actual - expected) <= rtol * abs(expected), f'{actual} != golden {expected}'


def strip_module(name):
  return name[len('module.'):] if name.startswith('module.') else name


def assert_param_grads(model, golden_grads, rtol=1e-3):
  grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
  assert sorted(grads) == sorted(strip_module(name) for name in golden_grads)
  for name, expected in golden_grads.items():
    assert_close_to_golden(grads[strip_module(name)], expected, rtol=rtol, name=name)


def total_grad_norm(model):
  return torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None)).item()


# ------------------------------------------------------------------------------------------ score (DSM) loss


@pytest.fixture
def small_score_model(request, small_score_model_ve, small_score_model_vp):
  return {'ve': small_score_model_ve, 'vp': small_score_model_vp}[request.param]


@pytest.mark.parametrize('small_score_model', ['ve', 'vp'], indirect=True)
@pytest.mark.parametrize('source', ['draws', 'seed'])
@pytest.mark.parametrize('likelihood_weighting', [False, True])
def test_dsm_loss_matches_golden(golden, small_score_model, source, likelihood_weighting, request):
  sde_name = request.node.callspec.params['small_score_model']
  record = golden(f'score_ncsnpp_small_{sde_name}')
  dsm = record['dsm']
  loss_fn = losses.get_sde_loss_fn(sde_from_record(record['sde']), train=dsm['train'], reduce_mean=dsm['reduce_mean'],
                                   continuous=dsm['continuous'], likelihood_weighting=likelihood_weighting,
                                   eps=dsm['eps'])
  with torch.no_grad():
    if source == 'draws':
      loss = loss_fn(small_score_model, record['batch_scaled'], t=dsm['t'], z=dsm['z'])
    else:
      torch.manual_seed(dsm['torch_manual_seed'])
      loss = loss_fn(small_score_model, record['batch_scaled'])
  expected = dsm['loss_likelihood_weighting'] if likelihood_weighting else dsm['loss']
  assert_loss(loss, expected)


def test_dsm_draws_t_then_z(golden, small_score_model_ve):
  """The seed path draws exactly the stored rand_u / z (the original's calls and order)."""
  dsm = golden('score_ncsnpp_small_ve')['dsm']
  sde = sde_lib.VESDE()
  torch.manual_seed(dsm['torch_manual_seed'])
  t, z = losses.draw_time_and_noise(sde, golden('score_ncsnpp_small_ve')['batch_scaled'], dsm['eps'])
  assert torch.equal(t, dsm['t']) and torch.equal(z, dsm['z'])


# ------------------------------------------------------------------------------------------ classifier losses


def classifier_loss_fn(record, case, train=True):
  assert record['continuous']
  return losses.get_classifier_objective(case, sde_from_record(record['sde']), eps=record['eps'], train=train)


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
@pytest.mark.parametrize('source', ['draws', 'seed'])
def test_classifier_losses_match_golden(golden, small_classifier, small_score_model_ve, small_score_model_vp, sde_name,
                                        source):
  """Every case of the file (total / dlsm / ce, σ-power weights, coef): loss, gradient norm, parameter gradients."""
  record = golden(f'classifier_loss_small_{sde_name}')
  score_model = {'ve': small_score_model_ve, 'vp': small_score_model_vp}[sde_name]
  draws = record['draws']
  assert set(CLASSIFIER_CASES) <= set(record['cases'])
  for case in record['cases'].values():
    classifier = copy.deepcopy(small_classifier)  # BatchNorm statistics move with every train-mode forward
    loss_fn = classifier_loss_fn(record, case)
    if source == 'draws':
      loss = loss_fn(classifier, score_model, record['batch_scaled'], record['labels'], t=draws['t'], z=draws['z'])
    else:
      torch.manual_seed(record['torch_manual_seed'])
      loss = loss_fn(classifier, score_model, record['batch_scaled'], record['labels'])
    assert_loss(loss, case['loss'])
    loss.backward()
    assert_loss(total_grad_norm(classifier), case['grad_total_norm'], rtol=1e-3)
    if 'param_grads' in case:
      assert_param_grads(classifier, case['param_grads'])


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_classifier_loss_pieces_match_golden(golden, small_classifier, small_score_model_ve, small_score_model_vp,
                                             sde_name):
  """Score model at eval mode without grad, one train-mode classifier forward (BN buffers), the batch VJP."""
  record = golden(f'classifier_loss_small_{sde_name}')
  draws = record['draws']
  sde = sde_from_record(record['sde'])
  score_model = {'ve': small_score_model_ve, 'vp': small_score_model_vp}[sde_name]
  perturbed, std = losses.perturb(sde, record['batch_scaled'], draws['t'], draws['z'])
  assert_close_to_golden(perturbed, draws['perturbed_data'], name='perturbed_data')
  assert_close_to_golden(std, draws['std'], name='std')
  score_fn = mutils.get_score_fn(sde, score_model, train=False, continuous=True)
  with torch.no_grad():
    assert_close_to_golden(score_fn(perturbed, draws['t']), draws['score'], name='score')
  classifier_fn = mutils.get_classifier_fn(sde, small_classifier, train=True, continuous=True)
  x = perturbed.detach().clone().requires_grad_(True)
  logits = classifier_fn(x, draws['t'])
  assert_close_to_golden(logits, draws['logits_train_mode'], name='logits_train_mode')
  grad = losses.log_prob_input_grad(logits, x, record['labels'], create_graph=False)
  assert_close_to_golden(grad, draws['log_prob_grad'], name='log_prob_grad')
  buffers = {name: value for name, value in small_classifier.named_buffers()}
  for name, expected in draws['bn_buffers_after'].items():
    assert_close_to_golden(buffers[strip_module(name)], expected, name=name)


def test_dlsm_gradient_couples_the_batch_in_train_mode(small_classifier):
  """B35: with BatchNorm in train mode, sample 0's input-gradient depends on sample 1 (one batch VJP)."""
  sde = sde_lib.VESDE()
  t = torch.full((2,), 0.5)
  torch.manual_seed(0)
  x = torch.rand(2, 3, 32, 32)
  labels = torch.tensor([1, 2])

  def grad_of_first(batch, train):
    classifier_fn = mutils.get_classifier_fn(sde, copy.deepcopy(small_classifier), train=train, continuous=True)
    batch = batch.clone().requires_grad_(True)
    return losses.log_prob_input_grad(classifier_fn(batch, t), batch, labels, create_graph=False)[0]

  changed = x.clone()
  changed[1] = torch.rand(3, 32, 32)
  assert not torch.allclose(grad_of_first(x, True), grad_of_first(changed, True))
  assert torch.allclose(grad_of_first(x, False), grad_of_first(changed, False), atol=1e-6)


def test_classifier_objective_rejects_unknown_loss_type():
  with pytest.raises(ValueError, match='loss_type'):
    losses.get_classifier_objective({'loss_type': 'mse'}, sde_lib.VESDE())


# ------------------------------------------------------------------------------------------ toy losses


def toy_network(name, state_dict):
  config = ml_collections.ConfigDict({'model': {'nf': 16}, 'classifier': {'nf': 16, 'classes': 2}})
  model = mutils.get_model(name)(config)
  model.load_state_dict(state_dict)
  return model


@pytest.mark.parametrize('source', ['draws', 'seed'])
def test_toy_dsm_loss_matches_golden(golden, source):
  record = golden('toy_models')
  dsm = record['score_dsm_loss']
  score_net = toy_network('toy_score', record['score_state_dict'])
  loss_fn = losses.get_sde_loss_fn(sde_lib.VESDE(sigma_min=dsm['std_min'], sigma_max=dsm['std_max']), train=True,
                                   reduce_mean=True, continuous=True, likelihood_weighting=False, eps=0.,
                                   weighting=dsm['weighting_dsm'])
  if source == 'draws':
    loss = loss_fn(score_net, dsm['batch'], t=dsm['t'], z=dsm['z'])
  else:
    torch.manual_seed(dsm['torch_manual_seed'])
    loss = loss_fn(score_net, dsm['batch'])
  assert_loss(loss, dsm['loss'])
  loss.backward()
  assert_param_grads(score_net, dsm['param_grads'])


@pytest.mark.parametrize('source', ['draws', 'seed'])
def test_toy_classifier_losses_match_golden(golden, source):
  record = golden('toy_models')
  golden_loss = record['classifier_loss']
  assert set(TOY_CLASSIFIER_CASES) <= set(golden_loss['cases'])
  score_net = toy_network('toy_score', record['score_state_dict'])
  sde = sde_lib.VESDE(sigma_min=golden_loss['std_min'], sigma_max=golden_loss['std_max'])
  batch, labels = golden_loss['batch'], golden_loss['labels']
  for case in golden_loss['cases'].values():
    classifier = toy_network('toy_classifier', record['classifier_state_dict'])
    loss_fn = losses.get_classifier_objective(case, sde, eps=0.)
    if source == 'draws':
      loss = loss_fn(classifier, score_net, batch, labels, t=golden_loss['t'], z=golden_loss['z'])
    else:
      torch.manual_seed(golden_loss['torch_manual_seed'])
      loss = loss_fn(classifier, score_net, batch, labels)
    assert_loss(loss, case['loss'])
    loss.backward()
    assert_loss(total_grad_norm(classifier), case['grad_total_norm'], rtol=1e-3)
    if 'param_grads' in case:
      assert_param_grads(classifier, case['param_grads'])


# ------------------------------------------------------------------------------------------ optimisation


def optim_config(warmup=4, grad_clip=1.0, lr=0.1):
  return ml_collections.ConfigDict({'optim': {'optimizer': 'Adam', 'lr': lr, 'beta1': 0.9, 'eps': 1e-8,
                                              'weight_decay': 0, 'warmup': warmup, 'grad_clip': grad_clip}})


def test_warmup_counts_real_steps():
  """lr = lr·min(step/warmup, 1) with step = updates already done (first update at lr 0), a Python float (B39)."""
  config = optim_config(warmup=4)
  param = torch.nn.Parameter(torch.zeros(3))
  optimizer = losses.get_optimizer(config, [param])
  optimize_fn = losses.optimization_manager(config)
  seen = []
  for step in range(6):
    param.grad = torch.ones(3)
    optimize_fn(optimizer, [param], step=step)
    seen.append(optimizer.param_groups[0]['lr'])
  assert seen == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1])
  assert all(type(lr) is float for lr in seen)


def test_gradient_clipping_uses_global_norm():
  config = optim_config(warmup=0, grad_clip=1.0)
  params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
  optimizer = torch.optim.SGD(params, lr=1.0)
  params[0].grad, params[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
  losses.optimization_manager(config)(optimizer, params, step=0)
  assert torch.allclose(torch.cat([p.detach() for p in params]), -torch.tensor([0.6, 0.0, 0.8]), atol=1e-6)


def test_classifier_step_counts_updates_and_moves_weights():
  """B1: the classifier trainer's counter advances, so warm-up ramps up instead of freezing lr at 0."""
  config = optim_config(warmup=2, grad_clip=1.0, lr=1e-2)
  toy_config = ml_collections.ConfigDict({'model': {'nf': 4}, 'classifier': {'nf': 4, 'classes': 2}})
  torch.manual_seed(0)
  classifier = mutils.get_model('toy_classifier')(toy_config)
  score_net = mutils.get_model('toy_score')(toy_config)
  optimizer = losses.get_optimizer(config, classifier.parameters())
  objective = losses.TotalObjective(sde_lib.VESDE(1e-3, 10.), eps=0., weighting_dlsm=2)
  step_fn = losses.get_classifier_step_fn(objective, losses.optimization_manager(config))
  state = dict(model=classifier, score_model=score_net, optimizer=optimizer, step=0)
  before = copy.deepcopy(classifier.state_dict())
  for _ in range(3):
    step_fn(state, torch.randn(8, 2), torch.randint(0, 2, (8,)))
  assert state['step'] == 3
  assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-2)
  assert any(not torch.equal(before[k], v) for k, v in classifier.state_dict().items())


def test_score_step_updates_ema_and_eval_uses_ema_weights():
  from models.ema import ExponentialMovingAverage
  config = optim_config(warmup=0, grad_clip=-1, lr=1e-2)
  toy_config = ml_collections.ConfigDict({'model': {'nf': 4}})
  torch.manual_seed(0)
  model = mutils.get_model('toy_score')(toy_config)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
  state = dict(model=model, optimizer=losses.get_optimizer(config, model.parameters()), ema=ema, step=0)
  sde = sde_lib.VESDE(1e-3, 10.)
  options = dict(reduce_mean=True, eps=0., weighting=2)
  train_step = losses.get_step_fn(sde, True, losses.optimization_manager(config), **options)
  eval_step = losses.get_step_fn(sde, False, **options)
  batch = torch.randn(16, 2)
  for _ in range(3):
    train_step(state, batch)
  assert state['step'] == 3 and ema.num_updates == 3
  raw = [p.detach().clone() for p in model.parameters()]
  torch.manual_seed(1)
  eval_loss = eval_step(state, batch)
  assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))  # weights restored after the EMA eval
  ema_model = copy.deepcopy(model)
  ema.copy_to(ema_model.parameters())
  torch.manual_seed(1)
  expected = losses.get_sde_loss_fn(sde, False, continuous=True, likelihood_weighting=False, **options)(ema_model,
                                                                                                      batch)
  assert eval_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_accuracy_protocol_uses_eps_and_eval_mode(small_classifier):
  """Accuracy as the original: t = eps for every sample, x̃ = x + σ(eps) z, BatchNorm running statistics, argmax."""
  sde = sde_lib.VESDE()
  torch.manual_seed(0)
  x, labels = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
  torch.manual_seed(1)
  correct = losses.get_classifier_accuracy_fn(sde, 1e-5)(small_classifier, x, labels)
  torch.manual_seed(1)
  z = torch.randn_like(x)
  t = torch.full((6,), 1e-5)
  small_classifier.eval()
  with torch.no_grad():
    expected = (small_classifier(x + sde.marginal_std(t)[:, None, None, None] * z,
                                 sde.marginal_std(t)).argmax(1) == labels).sum()
  assert int(correct) == int(expected)
  assert not small_classifier.training


class HalfOfInput(torch.nn.Module):
  """A stand-in network for the legacy discrete losses: output = x / 2 (ignores the noise label)."""

  def forward(self, x, labels):
    return x / 2


def test_legacy_discrete_losses_follow_the_formulas():
  """continuous=False: SMLD (VE) ½Σ(net + noise/σ²)²·σ² and DDPM (VP) mean (net − z)²."""
  batch = torch.rand(3, 2, 4, 4)
  ve, vp = sde_lib.VESDE(N=10), sde_lib.VPSDE(N=1000)
  torch.manual_seed(0)
  smld = losses.get_step_fn(ve, False, reduce_mean=False, continuous=False)
  ema = type('NoEma', (), {'store': lambda *a: None, 'copy_to': lambda *a: None, 'restore': lambda *a: None})()
  loss = smld(dict(model=HalfOfInput(), ema=ema), batch)
  torch.manual_seed(0)
  labels = torch.randint(0, 10, (3,))
  sigmas = torch.flip(ve.discrete_sigmas, (0,))[labels][:, None, None, None]
  noise = torch.randn_like(batch) * sigmas
  expected = (0.5 * ((batch + noise) / 2 + noise / sigmas ** 2).square().sum((1, 2, 3)) * sigmas.flatten() ** 2).mean()
  assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

  torch.manual_seed(1)
  ddpm = losses.get_step_fn(vp, False, reduce_mean=True, continuous=False)
  loss = ddpm(dict(model=HalfOfInput(), ema=ema), batch)
  torch.manual_seed(1)
  labels = torch.randint(0, 1000, (3,))
  z = torch.randn_like(batch)
  perturbed = (vp.sqrt_alphas_cumprod[labels][:, None, None, None] * batch
               + vp.sqrt_1m_alphas_cumprod[labels][:, None, None, None] * z)
  assert loss.item() == pytest.approx((perturbed / 2 - z).square().mean().item(), rel=1e-6)
  with pytest.raises(ValueError):
    losses.get_step_fn(sde_lib.subVPSDE(), False, continuous=False)
