"""The moons experiment: dataset, oracle, toy networks, losses through losses.py, D_P / D_L, samplers,
table and the end-to-end pipeline. Golden values come from toy_oracle.pt / toy_models.pt (read, never hard-coded)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import losses
import sde_lib
from toy import data as toy_data
from toy import metrics as toy_metrics
from toy import samplers as toy_samplers
from toy import table as toy_table
from configs.toy import default_toy_configs
from models import checkpoint as ckpt
from models import utils as mutils
from tests.helpers import REPO_ROOT, load_config

ORACLE_KEYS = ('score_upper', 'score_lower', 'score_full', 'likelihood_score_upper', 'likelihood_score_lower')


def assert_close_to_max(actual, expected, rtol):
  """|actual - expected| <= rtol * max|expected| elementwise (the golden tolerance convention)."""
  actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
  assert actual.shape == expected.shape
  scale = expected.abs().max().item()
  torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=0, atol=rtol * scale)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
  """The toy networks are tiny: one thread is as fast and does not stall on a busy machine."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def oracle_file(golden):
  return golden('toy_oracle')


@pytest.fixture(scope='module')
def models_file(golden):
  return golden('toy_models')


def toy_config(flat):
  """The defaults with the network sizes of a golden flat config, on CPU."""
  config = default_toy_configs.get_default_configs()
  config.model.nf = config.classifier.nf = flat['model.nf']
  config.classifier.classes = flat['model.classes']
  config.device = 'cpu'
  return config


@pytest.fixture(scope='module')
def networks(models_file):
  """(score net, classifier) built from the stored seeds, i.e. the original's default initialisation."""
  config = toy_config(models_file['config'])
  torch.manual_seed(models_file['score_init_seed'])
  score_net = mutils.create_model(config)
  torch.manual_seed(models_file['classifier_init_seed'])
  classifier = mutils.create_classifier(config)
  return score_net, classifier


# ----------------------------------------------------------------------------------------- data and oracle

def test_moons_dataset_matches_golden(oracle_file):
  positions, labels = toy_data.moons_dataset()
  assert positions.dtype == np.float64 and labels.dtype == np.int64
  np.testing.assert_array_equal(positions, oracle_file['positions'].numpy())
  np.testing.assert_array_equal(labels, oracle_file['labels'].numpy().astype(np.int64))
  assert (labels == 0).sum() == oracle_file['num_upper'] and (labels == 1).sum() == oracle_file['num_lower']
  for subset, c in (('upper', 0), ('lower', 1)):
    sub_positions, sub_labels = toy_data.moons_dataset(subset)
    np.testing.assert_array_equal(sub_positions, positions[labels == c])
    assert (sub_labels == c).all()


def test_evaluation_grid_matches_golden(oracle_file):
  grid = toy_data.evaluation_grid(oracle_file['grid_w'], oracle_file['grid_h'], oracle_file['grid_density'])
  assert grid.dtype == torch.float32
  torch.testing.assert_close(grid, oracle_file['grid_points'], rtol=0, atol=0)


def test_oracle_scores_match_golden(oracle_file):
  oracle = toy_metrics.oracle_scores(oracle_file['positions'], oracle_file['labels'].long(), oracle_file['grid_points'],
                                 oracle_file['sigma'], oracle_file['oracle_eps'])
  for key in ORACLE_KEYS:
    assert oracle[key].dtype == torch.float64
    assert_close_to_max(oracle[key], oracle_file[key], rtol=1e-6)


def test_oracle_uses_each_point_once_and_eps():
  """A mixture of two points: the score points to their weighted mean; eps damps it far away."""
  centres = torch.tensor([[0., 0.], [4., 0.]], dtype=torch.float64)
  x = torch.tensor([[2., 1.]], dtype=torch.float64)
  torch.testing.assert_close(toy_metrics.mixture_score(x, centres, 1.0, eps=0.), torch.tensor([[0., -1.]],
                                                                                        dtype=torch.float64))
  duplicated = torch.cat([centres, centres[:1]])
  assert toy_metrics.mixture_score(x, duplicated, 1.0, eps=0.)[0, 0] < 0  # a duplicate shifts the oracle (T4)
  far = torch.tensor([[10., 0.]], dtype=torch.float64)  # density ~1e-9 there: eps 1e-8 dominates
  torch.testing.assert_close(toy_metrics.mixture_score(far, centres, 1.0, eps=0.)[0, 0].item(), -6.0)
  assert -1 < toy_metrics.mixture_score(far, centres, 1.0, eps=1e-8)[0, 0] < 0


# ------------------------------------------------------------------------------------------------ networks

def test_networks_reproduce_golden_weights_and_outputs(models_file, networks):
  score_net, classifier = networks
  for net, stored in ((score_net, models_file['score_state_dict']), (classifier, models_file['classifier_state_dict'])):
    assert list(net.state_dict()) == list(stored)
    for key, value in stored.items():
      torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
  with torch.no_grad():
    assert_close_to_max(score_net(models_file['x'], models_file['sigma']), models_file['score_out'], 1e-5)
    assert_close_to_max(classifier(models_file['x'], models_file['sigma']), models_file['classifier_logits'], 1e-5)
    assert_close_to_max(classifier(models_file['x_saturated'], models_file['sigma_saturated']),
                        models_file['classifier_logits_saturated'], 1e-5)


@pytest.mark.parametrize('suffix', ['', '_saturated'])
def test_log_prob_grads_with_and_without_eps(models_file, networks, suffix):
  import sampling
  classifier = networks[1]
  x, sigma, labels = (models_file[f'{name}{suffix}'] for name in ('x', 'sigma', 'labels'))
  with_eps = sampling.log_prob_grad(classifier, x, sigma, labels, eps=1e-8)
  without_eps = sampling.log_prob_grad(classifier, x, sigma, labels, eps=0.)
  assert_close_to_max(with_eps, models_file[f'classifier_log_prob_grad{suffix}'], 1e-5)
  assert_close_to_max(without_eps, models_file[f'classifier_log_prob_grad_no_eps{suffix}'], 1e-5)
  if suffix:  # saturated: p(label) ~ 1e-10, so the 1e-8 damps the gradient by p / (p + 1e-8)
    reference = models_file['classifier_log_prob_grad_no_eps_saturated']
    assert (with_eps - reference).abs().max() > 0.5 * reference.abs().max()
  # The noise-level wrapper of toy.metrics is the eps-free form of the metric.
  for c in range(2):
    rows = labels == c
    if rows.any():
      one_sigma = sigma[rows][:1]
      expected = sampling.log_prob_grad(classifier, x[rows][:1], one_sigma, labels[rows][:1], eps=0.)
      actual = toy_metrics.likelihood_score(classifier, x[rows][:1], one_sigma.item(), c)
      assert_close_to_max(actual, expected, 1e-6)


# -------------------------------------------------------------------------------------------------- losses

def loss_sde(record):
  return sde_lib.VESDE(sigma_min=record['std_min'], sigma_max=record['std_max'])


def test_dsm_loss_from_seed_and_draws(models_file, networks):
  record = models_file['score_dsm_loss']
  score_net = networks[0]
  loss_fn = losses.get_sde_loss_fn(loss_sde(record), train=True, reduce_mean=True, continuous=True,
                                   likelihood_weighting=False, eps=0., weighting=record['weighting_dsm'])
  torch.manual_seed(record['torch_manual_seed'])
  loss = loss_fn(score_net, record['batch'])
  assert loss.item() == pytest.approx(record['loss'], rel=1e-5)
  score_net.zero_grad()
  loss.backward()
  for name, param in score_net.named_parameters():
    assert_close_to_max(param.grad, record['param_grads'][name], 1e-3)
  score_net.zero_grad()
  from_draws = loss_fn(score_net, record['batch'], t=record['t'], z=record['z'])
  assert from_draws.item() == pytest.approx(record['loss'], rel=1e-5)
  assert_close_to_max(loss_sde(record).marginal_std(record['t']), record['std_value_cond'], 1e-6)


def test_classifier_losses_from_seed(models_file, networks):
  record = models_file['classifier_loss']
  score_net, classifier = networks
  sde = loss_sde(record)
  for name, case in record['cases'].items():
    loss_fn = losses.get_classifier_objective(case, sde, eps=0., train=True)
    torch.manual_seed(record['torch_manual_seed'])
    classifier.zero_grad()
    loss = loss_fn(classifier, score_net, record['batch'], record['labels'])
    assert loss.item() == pytest.approx(case['loss'], rel=1e-5), name
    loss.backward()
    grad_norm = math.sqrt(sum((p.grad.double() ** 2).sum().item() for p in classifier.parameters()))
    assert grad_norm == pytest.approx(case['grad_total_norm'], rel=1e-3), name
    for param_name, grad in case.get('param_grads', {}).items():
      assert_close_to_max(dict(classifier.named_parameters())[param_name].grad, grad, 1e-3)
  classifier.zero_grad()


def test_classifier_objective_from_stored_draws(models_file, networks):
  record = models_file['classifier_loss']
  classifier = networks[1]
  std = record['std_value_cond']
  for name, case in record['cases'].items():
    objective = losses.get_classifier_objective(case, loss_sde(record), eps=0.)
    loss = objective.from_draws(lambda x: classifier(x, std), record['perturbed_batch'], record['labels'],
                                record['score'], record['z'], std)
    assert loss.item() == pytest.approx(case['loss'], rel=1e-5), name


# ------------------------------------------------------------------------------------------------- metrics

def test_distances_match_golden(oracle_file, models_file, networks):
  record = models_file['distance_metric']
  score_net, classifier = networks
  grid = record['grid_points']
  prior = toy_metrics.prior_score(score_net, grid, record['sigma'])
  likelihoods = [toy_metrics.likelihood_score(classifier, grid, record['sigma'], c) for c in range(2)]
  assert_close_to_max(prior, record['estimated_prior_score'], 1e-5)
  assert_close_to_max(likelihoods[0], record['estimated_likelihood_grad_upper'], 1e-5)
  assert_close_to_max(likelihoods[1], record['estimated_likelihood_grad_lower'], 1e-5)
  oracle = {key: oracle_file[key] for key in ORACLE_KEYS}
  metrics = toy_metrics.classifier_distances(oracle, prior, likelihoods, record['scaling_factor'])
  assert set(metrics) == {'D_full', 'D_P_upper', 'D_P_lower', 'D_L_upper', 'D_L_lower'}
  for key, value in metrics.items():
    assert value == pytest.approx(record[key], rel=1e-5), key
  class_scores = [prior + likelihoods[0], prior + likelihoods[1]]  # posterior SM with exact class fields
  posterior = toy_metrics.posterior_sm_distances(oracle, class_scores)
  assert posterior['D_P_upper'] == pytest.approx(record['D_P_upper'], rel=1e-5)


# ------------------------------------------------------------------------------------------------ samplers

def gaussian_score(mean, data_var):
  """Noise-level score of N(mean, data_var I) convolved with N(0, sigma² I)."""
  mean = torch.tensor(mean)
  return lambda x, sigma: (mean - x) / (data_var + sigma[:, None] ** 2)


def sampler_config(method, num_steps):
  config = default_toy_configs.get_default_configs()
  config.sampling.method = method
  config.sampling.num_steps = num_steps
  return config


def test_annealed_sampler_draws_the_noisy_target():
  """With an exact score the corrected sampler reproduces p_sigma_end = N(mean, (s² + sigma_end²) I)."""
  config = sampler_config('annealed_pc', 200)
  torch.manual_seed(0)
  samples = toy_samplers.sample_class(gaussian_score([5., -3.], 4.), None, 0, 1.0, 4000, config, 'cpu')
  target_var = 4. + config.model.std ** 2
  assert samples.shape == (4000, 2) and torch.isfinite(samples).all()
  torch.testing.assert_close(samples.mean(0), torch.tensor([5., -3.]), rtol=0, atol=0.1 * math.sqrt(target_var))
  torch.testing.assert_close(samples.var(0), torch.full((2,), target_var), rtol=0.08, atol=0)


def test_original_sampler_is_degenerate():
  """The original sampler (T1) does not sample the target: its spread is far too wide for the same score."""
  config = sampler_config('original', 200)
  torch.manual_seed(0)
  samples = toy_samplers.sample_class(gaussian_score([5., -3.], 4.), None, 0, 1.0, 4000, config, 'cpu')
  target_var = 4. + config.model.std ** 2
  assert (samples.var(0) > 1.5 * target_var).all()


def test_guided_sampling_moves_towards_the_class(networks):
  """With a classifier whose class-1 log-probability grows along +x, guidance shifts the samples to +x."""
  linear = torch.nn.Linear(2, 2)
  with torch.no_grad():
    linear.weight.copy_(torch.tensor([[-1., 0.], [1., 0.]]))
    linear.bias.zero_()
  classifier = lambda x, sigma: linear(x)  # noqa: E731
  config = sampler_config('annealed_pc', 50)
  torch.manual_seed(0)
  plain = toy_samplers.sample_class(gaussian_score([0., 0.], 1.), None, 1, 1.0, 2000, config, 'cpu')
  guided = toy_samplers.sample_class(gaussian_score([0., 0.], 1.), classifier, 1, 1.0, 2000, config, 'cpu')
  # Target along x: N(0, v) times p(y=1 | x) = sigmoid(2x), v = 1 + sigma_end²; its mean by quadrature.
  v = 1. + config.model.std ** 2
  xs = torch.linspace(-60, 60, 20001, dtype=torch.float64)
  weights = torch.exp(-xs ** 2 / (2 * v)) * torch.sigmoid(2 * xs)
  target_mean = ((xs * weights).sum() / weights.sum()).item()
  assert abs(plain[:, 0].mean().item()) < 0.5
  assert guided[:, 0].mean().item() == pytest.approx(target_mean, abs=0.5)
  with pytest.raises(ValueError, match='sampling.method'):
    toy_samplers.sample_class(gaussian_score([0., 0.], 1.), None, 0, 1.0, 10, sampler_config('euler', 2), 'cpu')


def test_classwise_prdc_separates_good_and_bad_samples():
  positions, labels = toy_data.moons_dataset()
  real = toy_data.reference_sets(positions, labels, 7.5, torch.Generator().manual_seed(0))
  assert [len(r) for r in real] == [5000, 5000]
  real = [r[:1000] for r in real]  # smaller sets keep the test fast
  good = [r + np.random.default_rng(c).normal(0, 1e-3, r.shape) for c, r in enumerate(real)]
  collapsed = [r.mean(0) + 0.2 * (r - r.mean(0)) for r in real]  # precise, but misses most of the class
  shifted = [r + np.array([60., 0.]) for r in real]
  assert all(m['precision'] > 0.99 and m['recall'] > 0.99 for m in toy_metrics.classwise_prdc(real, good, 5))
  assert all(m['precision'] > 0.95 and m['recall'] < 0.3 for m in toy_metrics.classwise_prdc(real, collapsed, 5))
  assert all(m['precision'] < 0.5 for m in toy_metrics.classwise_prdc(real, shifted, 5))


def test_classwise_prdc_equals_prdc_package():
  import contextlib
  import io
  import prdc
  rng = np.random.default_rng(0)
  real = [rng.normal(0, 7.5, (300, 2)), rng.normal(3, 7.5, (300, 2))]
  fake = [rng.normal(1, 7.0, (250, 2)), rng.normal(0, 9.0, (250, 2))]
  for ours, r, f in zip(toy_metrics.classwise_prdc(real, fake, nearest_k=5), real, fake):
    with contextlib.redirect_stdout(io.StringIO()):
      reference = prdc.compute_prdc(r.astype(np.float32), f.astype(np.float32), nearest_k=5)
    for key, value in reference.items():
      assert ours[key] == pytest.approx(float(value), abs=1e-12), key


# --------------------------------------------------------------------------------------------------- table

def table_rows():
  return {'base': {'D_P': [0.19812, 0.1971], 'D_L': [0.19, 0.181], 'precision': [0.944, 0.93], 'recall': [1.0, 0.996]},
          'posterior_sm': {'D_P': [0.063, 0.06], 'D_L': None, 'precision': [0.97, 0.97], 'recall': [1., 1.]}}


def test_format_table():
  lines = toy_table.format_table(table_rows(), scale=20.).splitlines()
  assert lines[0] == ('| method | E[D_P] (c1 / c2) | E[D_L] (c1 / c2) | Precision (c1 / c2) | Recall (c1 / c2) |')
  assert lines[1] == '|---|---|---|---|---|'
  assert lines[2] == '| (a) Base (CE) | 0.198 / 0.197 | 0.190 / 0.181 | 0.94 / 0.93 | 1.00 / 1.00 |'
  assert lines[3] == '| (c) Posterior SM | 0.063 / 0.060 | - | 0.97 / 0.97 | 1.00 / 1.00 |'
  assert len(lines) == 4
  assert '| (b) Scaling (CE, λ = 20) | 2.734 / 2.627 |' in toy_table.format_table(toy_table.PAPER_TABLE, scale=20.)
  assert '| (b) Scaling (CE, λ > 1) |' in toy_table.format_table(toy_table.PAPER_TABLE)


def test_paper_ordering_check():
  rows = {'ours': {'D_P': [0.07, 0.06]}, 'base': {'D_P': [0.2, 0.2]}, 'scaling': {'D_P': [2.7, 2.6]}}
  assert toy_table.paper_ordering_holds(rows)
  rows['ours']['D_P'][1] = 0.21
  assert not toy_table.paper_ordering_holds(rows)


def test_write_table(tmp_path):
  results = {'rows': table_rows(), 'scaling_factor': 20., 'seed': 3}
  md_path, json_path = toy_table.write_table(results, str(tmp_path))
  markdown = open(md_path).read()
  assert toy_table.format_table(table_rows(), 20.) in markdown
  assert toy_table.format_table(toy_table.PAPER_TABLE) in markdown
  assert json.load(open(json_path)) == json.loads(json.dumps(results))


# ------------------------------------------------------------------------------------------------- configs

def test_stage_configs_follow_the_original_files(models_file):
  """configs/toy/<stage>.py carry the original configs' settings (toy_models.pt configs_by_file)."""
  original_files = {'score': 'score', 'classifier_ce': 'classifier_ce', 'classifier_dlsm': 'classifier_dlsm',
                    'classifier_total': 'classifier_total'}
  for stage, original_name in original_files.items():
    config, flat = load_config(f'configs/toy/{stage}.py'), models_file['configs_by_file'][original_name]
    assert config.optim.lr == flat['optim.lr']
    assert config.training.batch_size == flat['training.batch_size']
    assert config.training.n_iters == flat['training.n_iters']
    assert (config.model.sigma_min, config.model.sigma_max) == (flat['model.std_min'], flat['model.std_max'])
    assert config.model.std == flat['model.std'] and config.model.nf == flat['model.nf']
    assert config.model.weighting_dsm == flat['model.weighting_dsm']
    assert config.model.weighting_dlsm == flat['model.weighting_dlsm']
    assert config.model.weighting_ce == flat['model.weighting_ce']
    assert config.optim.beta1 == flat['optim.beta1'] and config.optim.eps == flat['optim.eps']
    if 'training.loss' in flat:
      assert config.model.loss_type == flat['training.loss'] and config.model.coef == flat['model.coef']
  for stage, subset in (('score_upper', 'upper'), ('score_lower', 'lower')):
    assert load_config(f'configs/toy/{stage}.py').data.subset == subset


# ---------------------------------------------------------------------------------------------- training

def tiny_stage_config(stage, tmp_path, n_iters=40, batch_size=500, lr=2e-3):
  config = default_toy_configs.get_default_configs()
  config.stages[stage].update(dict(n_iters=n_iters, batch_size=batch_size, lr=lr))
  config = default_toy_configs.stage_config(config, stage)
  config.training.snapshot_freq = config.training.eval_freq = config.training.log_freq = 1000
  config.device = 'cpu'
  return config


def test_short_dlsm_training_lowers_the_loss(tmp_path, models_file, networks):
  """run_lib trains a DLSM classifier on a frozen score model; the loss on fixed draws goes down."""
  import run_lib
  score_net = networks[0]
  score_path = str(tmp_path / 'score.pth')
  from models.ema import ExponentialMovingAverage
  ckpt.save_checkpoint(score_path, score_net, ema=ExponentialMovingAverage(score_net.parameters(), 0.))
  config = tiny_stage_config('classifier_dlsm', tmp_path)
  config.model.score_restore_path = score_path

  positions, labels = toy_data.moons_dataset()
  batch, batch_labels = torch.as_tensor(positions[:2000]).float(), torch.as_tensor(labels[:2000])
  sde, _ = sde_lib.get_sde(config)
  loss_fn = losses.DLSMObjective(sde, eps=0., weighting_dlsm=2)

  def fixed_draw_loss(classifier):
    torch.manual_seed(123)
    return loss_fn(classifier, score_net, batch, batch_labels).item()

  torch.manual_seed(config.seed)
  before = fixed_draw_loss(mutils.create_classifier(config))
  run_lib.train(config, str(tmp_path / 'dlsm'), 'classifier')
  trained = ckpt.restore_classifier(ckpt.latest_checkpoint(str(tmp_path / 'dlsm' / 'checkpoints')),
                                    mutils.create_classifier(config))
  assert fixed_draw_loss(trained) < 0.9 * before


def test_main_trains_toy_stages(tmp_path):
  """The toy configs run through main.py (--model score, then classifier with --restore)."""
  common = ['--config.training.n_iters=3', '--config.training.batch_size=100', '--config.device=cpu']
  env = dict(os.environ, OMP_NUM_THREADS='1')
  score = subprocess.run([sys.executable, str(REPO_ROOT / 'main.py'), f'--config={REPO_ROOT}/configs/toy/score.py',
                          '--model=score', '--workdir=toy_score'] + common,
                         cwd=tmp_path, env=env, capture_output=True, text=True)
  assert score.returncode == 0, score.stderr[-2000:]
  score_ckpt = ckpt.latest_checkpoint(str(tmp_path / 'results' / 'toy_score' / 'checkpoints'))
  assert score_ckpt.endswith('checkpoint_4.pth')
  classifier = subprocess.run([sys.executable, str(REPO_ROOT / 'main.py'),
                               f'--config={REPO_ROOT}/configs/toy/classifier_total.py', '--model=classifier',
                               '--workdir=toy_total', f'--restore={score_ckpt}'] + common,
                              cwd=tmp_path, env=env, capture_output=True, text=True)
  assert classifier.returncode == 0, classifier.stderr[-2000:]
  assert ckpt.latest_checkpoint(str(tmp_path / 'results' / 'toy_total' / 'checkpoints')).endswith('checkpoint_4.pth')


def test_pipeline_end_to_end(tmp_path, monkeypatch):
  """run_lib_toy on a tiny config: every stage trains, the table and plots are written."""
  import run_lib_toy
  full_reference_sets = toy_data.reference_sets  # 500 reference points per class keep PRDC fast here
  monkeypatch.setattr(toy_data, 'reference_sets', lambda *args: [r[:500] for r in full_reference_sets(*args)])
  config = load_config('configs/toy/demo.py')
  for stage in default_toy_configs.STAGES:
    config.stages[stage].update(dict(n_iters=4, batch_size=200))
  config.training.snapshot_freq = config.training.eval_freq = config.training.log_freq = 1000
  config.sampling.num_steps = 5
  config.eval.num_samples = 300
  config.device = 'cpu'
  workdir = tmp_path / 'toy'
  results = run_lib_toy.run_pipeline(config, str(workdir))
  expected_rows = {'base', 'scaling', 'posterior_sm', 'dlsm', 'ours', 'oracle', 'ours_original_sampler'}
  assert set(results['rows']) == expected_rows
  for key in ('precision', 'recall'):
    assert all(0 <= v <= 1 for row in results['rows'].values() for v in row[key])
  assert results['rows']['scaling']['scale'] == config.eval.scaling_baseline
  assert results['paper_ordering_holds'] in (True, False)
  table = json.loads((workdir / 'toy_table.json').read_text())
  assert table['rows']['ours']['D_P'] == pytest.approx(results['rows']['ours']['D_P'])
  assert '(d) Ours (total loss)' in (workdir / 'toy_table.md').read_text()
  for name in ('posterior_scores.png', 'samples.png', 'samplers.png'):
    assert (workdir / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  for stage in default_toy_configs.STAGES:
    assert ckpt.latest_checkpoint(str(workdir / stage / 'checkpoints')).endswith('checkpoint_5.pth')
