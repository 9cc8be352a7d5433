"""The digits experiment: the reference-classifier feature space, its Fréchet distance, and a tiny `make digits`
run through the real command lines (run_lib_digits.py --tiny) that must produce every table field without
TensorFlow (a stand-in `tensorflow` package that refuses to import is put on the path)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

import evaluation
import sampling
from tests.helpers import REPO_ROOT, load_config

DIGITS_EVAL = 'configs/digits/eval.py'


def digits_eval_config(tmp_path, steps=30):
  config = load_config(DIGITS_EVAL)
  config.eval.reference_classifier = str(tmp_path / 'reference.pth')
  config.eval.reference_steps = steps
  return config


def test_frechet_distance_equals_the_closed_form():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(400, 5)), 2. * rng.normal(size=(300, 5)) + 0.5
  cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  root_real = scipy.linalg.sqrtm(cov_real).real  # tr((Σr Σf)^½) = tr((Σr^½ Σf Σr^½)^½), a symmetric root
  cross = scipy.linalg.sqrtm(root_real @ cov_fake @ root_real).real
  gap = real.mean(0) - fake.mean(0)
  expected = gap @ gap + np.trace(cov_real) + np.trace(cov_fake) - 2 * np.trace(cross)
  assert evaluation.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-9)
  assert evaluation.frechet_distance(real, real) == pytest.approx(0., abs=1e-9)


def test_feature_spaces_are_named_by_the_config(tmp_path):
  config = digits_eval_config(tmp_path)
  assert evaluation.feature_space(config) is evaluation.ReferenceFeatures
  config.eval.features = 'inception'
  assert evaluation.feature_space(config) is evaluation.InceptionFeatures
  config.eval.features = 'clip'
  with pytest.raises(ValueError, match="'clip' is not a feature space; known: inception, reference_classifier"):
    evaluation.feature_space(config)


def test_reference_features_train_once_then_load(tmp_path):
  config = digits_eval_config(tmp_path)
  messages = []
  trained = evaluation.ReferenceFeatures(config, log=messages.append)
  assert os.path.isfile(config.eval.reference_classifier) and 'test accuracy' in messages[0]
  loaded = evaluation.ReferenceFeatures(config, log=messages.append)
  assert loaded.test_accuracy == trained.test_accuracy and config.eval.reference_classifier in messages[1]
  images = np.random.default_rng(0).integers(0, 256, size=(7, 8, 8, 1), dtype=np.uint8)
  features = evaluation.get_inception_features(images, loaded, batch_size=4)
  again = evaluation.get_inception_features(images, trained, batch_size=7)
  assert features[0].shape == (7, 32) and features[1].shape == (7, 10)
  np.testing.assert_allclose(features[0], again[0], rtol=1e-5, atol=1e-6)


def test_classifier_accuracy_counts_top1():
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
  with torch.no_grad():
    model[1].weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 1., 0, 0]]))
    model[1].bias.zero_()
  images = torch.tensor([[255, 0, 0, 0], [0, 255, 0, 0], [255, 0, 0, 0]], dtype=torch.uint8).reshape(3, 2, 2, 1)
  assert evaluation.classifier_accuracy(model, images, torch.tensor([0, 1, 1]), batch_size=2) == pytest.approx(2 / 3)


@pytest.fixture(scope='module')
def tiny_digits_run(tmp_path_factory):
  """run_lib_digits.py --tiny with one seed in a fresh folder (every stage is a real script in its own process)."""
  cwd = tmp_path_factory.mktemp('digits')
  result = run_tiny_digits(cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return cwd, result


def run_tiny_digits(cwd):
  """The tiny pipeline with a `tensorflow` package on the path that refuses to import: no stage may load it."""
  blocker = cwd / 'no_tensorflow' / 'tensorflow'
  blocker.mkdir(parents=True, exist_ok=True)
  (blocker / '__init__.py').write_text('raise ImportError("the digits pipeline must not import tensorflow")\n')
  env = dict(os.environ, PYTHONPATH=str(blocker.parent), OMP_NUM_THREADS='1')
  return subprocess.run([sys.executable, str(REPO_ROOT / 'run_lib_digits.py'), '--tiny', '--seeds', '3'],
                        cwd=cwd, capture_output=True, text=True, timeout=2400, env=env)


def test_tiny_digits_run_writes_every_table_field_and_the_grids(tiny_digits_run):
  from run_lib_digits import COLUMNS, METHODS, POSTERIOR_COLUMNS, POSTERIOR_SIGMAS, PRIOR_COLUMNS
  cwd, result = tiny_digits_run
  with open(cwd / 'digits_run' / 'digits_table.json') as file:
    report = json.load(file)
  assert report['seeds'] == [3] and 0. <= report['reference_test_accuracy'] <= 1.
  for method, _, _ in METHODS:
    assert set(report['table'][method]) == {column for column, *_ in COLUMNS + POSTERIOR_COLUMNS + PRIOR_COLUMNS}
    assert all(np.isfinite(entry['mean']) for entry in report['table'][method].values())
    assert (cwd / 'digits_run' / f'samples_{method}.png').is_file()
  table = (cwd / 'digits_run' / 'digits_table.md').read_text()
  assert all(column in table for column, *_ in COLUMNS + POSTERIOR_COLUMNS) and '(d) Ours (total loss)' in table
  assert '| share (perfect classifier\'s gain) |' in table and (cwd / 'digits_run' / 'posterior_errors.png').is_file()
  posterior = report['per_seed']['3']['scaling']['posterior']
  assert posterior['scale'] == 10. and set(POSTERIOR_SIGMAS) <= set(posterior)
  assert 'digits/score' in report['timings_s'] and report['total_s'] > 0


def test_tiny_digits_rerun_reuses_every_finished_stage(tiny_digits_run):
  cwd, first = tiny_digits_run
  assert first.stdout.count('== digits/') == 1 + 3 + 4 * 5  # score, 3 classifiers, 4 methods x 5 stages
  table = (cwd / 'digits_run' / 'digits_table.md').read_text()
  again = run_tiny_digits(cwd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '== digits/' not in again.stdout  # no stage starts again
  assert (cwd / 'digits_run' / 'digits_table.md').read_text().split('Wall time')[0] == table.split('Wall time')[0]


def test_tiny_digits_run_logs_every_stage_it_ran_side_by_side(tiny_digits_run):
  cwd, result = tiny_digits_run
  logs = sorted(path.name for path in (cwd / 'results' / 'digits' / 'logs').iterdir())
  assert len(logs) == 1 + 3 + 4 * 5 and 'digits_seed3_ours_sampling.log' in logs
  posterior_log = (cwd / 'results' / 'digits' / 'logs' / 'digits_seed3_ours_posterior_scores.log').read_text()
  assert 'σ 1: L ' in posterior_log and 'half-split likelihood' in posterior_log
  sampling_log = (cwd / 'results' / 'digits' / 'logs' / 'digits_seed3_ours_sampling.log').read_text()
  assert 'batches of 10 left to sample' in sampling_log


def test_a_failed_stage_stops_with_one_line_naming_its_log(tmp_path):
  """The score stage fails (another process holds its run folder): the driver ends with one line, no traceback,
  naming the stage's log, which holds the stage's own one-line error."""
  import plumbing
  with plumbing.RunFolderLock(str(tmp_path / 'results' / 'digits' / 'score')):
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'run_lib_digits.py'), '--tiny', '--seeds', '0'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == ("error: stage 'digits/score' failed; its "
                                                    "output is in results/digits/logs/digits_score.log")
  log = (tmp_path / 'results' / 'digits' / 'logs' / 'digits_score.log').read_text()
  assert 'is in use by pid' in log and 'Traceback' not in log


def test_digits_driver_help_exits_0_and_names_tiny():
  result = subprocess.run([sys.executable, str(REPO_ROOT / 'run_lib_digits.py'), '--help'], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and '--tiny' in result.stdout + result.stderr


def run_posterior(cwd, *args):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'run_lib_evaluation.py'), '--config',
                         str(REPO_ROOT / DIGITS_EVAL), '--workdir', 'post', '--posterior', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_posterior_without_networks_is_one_line_and_writes_nothing(tmp_path):
  result = run_posterior(tmp_path, '--restore_classifier', 'c.pth')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == 'error: No model.score_restore_path: pass --restore or set it in the config'
  missing = run_posterior(tmp_path, '--restore', 'nowhere/s.pth', '--restore_classifier', 'c.pth')
  assert missing.returncode == 1 and 'nowhere/s.pth does not exist' in missing.stderr and 'Traceback' not in missing.stderr
  assert not (tmp_path / 'results').exists()


def test_posterior_refuses_a_vp_sde_and_sigmas_outside_the_range(tmp_path):
  vp = run_posterior(tmp_path, '--config.training.sde=vpsde')
  assert vp.returncode == 1 and "training.sde='vpsde': must be 'vesde'" in vp.stderr
  wide = run_posterior(tmp_path, '--config.eval.posterior_sigmas=(1.,9.)')
  assert wide.returncode == 1 and 'eval.posterior_sigmas=(1.0, 9.0): must be σ levels in [0.01, 5]' in wide.stderr
  assert 'Traceback' not in vp.stderr + wide.stderr and not (tmp_path / 'results').exists()


def test_posterior_report_of_networks_on_digits():
  """The report's shape and invariants on untrained networks: the same noisy points for every network (the unguided
  C and the share do not depend on the classifier), share = C_unguided when s_θ is exact, accuracies in [0, 1]."""
  import datasets
  import sde_lib
  from models import utils as mutils
  config = load_config(DIGITS_EVAL)
  config.model.nf, config.classifier.resnet_base_width = 8, 4
  torch.manual_seed(0)
  score_model, classifier = mutils.create_model(config).eval(), mutils.create_classifier(config).eval()
  splits = []
  for split in ('train', 'test'):
    images, labels = datasets.load_split(config, split)
    splits += [evaluation.images_to_unit_nchw(torch.from_numpy(images[:300])).double(), torch.from_numpy(labels[:300])]
  sde, _ = sde_lib.get_sde(config)
  report = evaluation.posterior_score_report(sde, (score_model, classifier), splits, (1., 4.), 1., draws=1)
  again = evaluation.posterior_score_report(sde, (score_model, mutils.create_classifier(config).eval()), splits,
                                            (1., 4.), 3., draws=1)
  assert set(report) == {'clean', '1', '4'} and 0 <= report['clean']['accuracy'] <= 1
  for sigma in ('1', '4'):
    assert report[sigma]['C_unguided'] == again[sigma]['C_unguided'] and report[sigma]['share'] == again[sigma]['share']
    assert 0 < report[sigma]['share'] < 1 and set(report[sigma]['half_split']) == {'prior', 'conditional', 'likelihood'}
  assert report['4']['half_split']['likelihood'] < report['1']['half_split']['likelihood']


def test_recipe_goal_needs_half_the_share_at_every_sigma_and_l_below_half():
  sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
  import bench_dlsm_recipes
  row = {f'{key} σ={s}': value for s in ('1', '1.5', '2', '4')
         for key, value in (('L', 0.4), ('C', 0.019), ('C_unguided', 0.03), ('share', 0.02))}
  assert bench_dlsm_recipes.goal_met(row)
  assert not bench_dlsm_recipes.goal_met(dict(row, **{'C σ=4': 0.0201}))  # removes less than half the share at σ 4
  assert not bench_dlsm_recipes.goal_met(dict(row, **{'L σ=2': 0.51}))
  assert bench_dlsm_recipes.goal_met(dict(row, **{'L σ=4': 3.}))  # L is asked for at σ 1 and 2 only
  table = bench_dlsm_recipes.markdown([dict(row, variant='a', seed=0, accuracy=0.9, train_seconds=10.),
                                       dict(row, variant='a', seed=1, accuracy=0.8, train_seconds=12.)])
  assert '| a | 0,1 | 0.400 ± 0.000 |' in table and '| 2/2 |' in table


def test_prior_criterion_compares_each_flow_scale_with_the_make_digits_sampler():
  sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
  import bench_digits_prior
  rows = [dict(score='s', guide='c', sampler='deterministic, λ 1', recognised=0.70, pixel_fd=0.12),
          dict(score='s', guide='c', sampler='deterministic, λ 2', recognised=0.80, pixel_fd=0.12),
          dict(score='s', guide='c', sampler='η 1', recognised=0.99, pixel_fd=0.01),
          dict(score='s', guide='c', sampler='make digits', recognised=0.82, pixel_fd=0.09),
          dict(score='s', guide='exact', sampler='deterministic, λ 2', recognised=0.70, pixel_fd=0.12),
          dict(score='s', guide='exact', sampler='make digits', recognised=0.82, pixel_fd=0.09)]
  verdicts = bench_digits_prior.criterion(rows, floor_fd=0.1)
  assert set(verdicts) == {'s | c | deterministic, λ 1', 's | c | deterministic, λ 2',
                           's | exact | deterministic, λ 2'}
  verdict = verdicts['s | c | deterministic, λ 2']
  assert verdict['met'] and verdict['fd_ratio'] == pytest.approx(1.2) and verdict['recognised_gap'] == pytest.approx(0.02)
  assert not verdicts['s | c | deterministic, λ 1']['met']  # recognised 0.12 below: one verdict per flow scale
  assert not verdicts['s | exact | deterministic, λ 2']['met']  # and per guide
  assert not bench_digits_prior.criterion(rows, floor_fd=0.07)['s | c | deterministic, λ 2']['met']
  args = bench_digits_prior.parse_args(['--score', 's', '--guide', 'c', '--flow_scales', '1', '2', '--etas', '3'])
  specs = bench_digits_prior.sampler_specs(args)
  assert [spec[0] for spec in specs] == ['deterministic, λ 1', 'deterministic, λ 2', 'η 3', 'make digits']
  config = bench_digits_prior.sampler_config(0., 20, 2.)
  assert config.sampling.dpmpp_2m.eta == 0. and config.sampling.num_steps == 20 and config.sampling.scaling_factor == 2.
  assert config.sampling.dpmpp_2m.second_order_below == math.inf  # the 2M flow at every step


def test_flow_guidance_pairs_consistent_sums_to_the_exact_conditional_score_mismatched_does_not():
  sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
  import bench_flow_guidance
  import mixture
  import sde_lib
  config = load_config(DIGITS_EVAL)
  sde = sde_lib.get_sde(config)[0]
  generator = torch.Generator().manual_seed(1)
  train = torch.rand(40, 1, 8, 8, generator=generator, dtype=torch.float64)
  train_labels = torch.arange(10).repeat(4)
  labels = torch.arange(10).repeat(2)
  x = torch.rand(20, 1, 8, 8, generator=generator)
  t = sde.time_of_sigma(torch.full((20,), 0.8, dtype=torch.float64)).float()
  keep = evaluation.half_of_each_class(train_labels, torch.Generator().manual_seed(0))
  assert [int(keep[train_labels == c].sum()) for c in range(10)] == [2] * 10
  fields = bench_flow_guidance.oracle_fields(sde, train, train_labels, labels)
  exact_a = mixture.conditional_scores(x.double(), labels, train[keep], train_labels[keep], 0.8).float()
  guided = {name: sampling.get_guided_score_fn(prior, likelihood, labels, 1.)(x, t) for name, (prior, likelihood)
            in fields.items()}
  assert torch.allclose(guided['consistent'], exact_a, rtol=1e-4, atol=1e-4)
  assert not torch.allclose(guided['mismatched'], exact_a, rtol=1e-2, atol=1e-2)
  switched = bench_flow_guidance.switched(sde, lambda x, t: torch.zeros_like(x), lambda x, t: torch.ones_like(x), 1.)
  assert switched(x, t).sum() == 0 and switched(x, sde.time_of_sigma(torch.full((20,), 2.)).float()).all()


def test_flow_guidance_benchmark_writes_every_run_and_the_guidance_shift(tmp_path):
  sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
  import bench_flow_guidance
  bench_flow_guidance.main(['--seeds', '0', '--per_class', '2', '--etas', '0', '1', '--flow_scales', '1', '2',
                            '--flow_steps', '5', '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'bench_flow_guidance.json').read_text())
  runs = [(row['pair'], row['eta'], row['scale'], row.get('steps', 20)) for row in report['rows']]
  assert runs == [(pair, eta, scale, 20) for pair in ('consistent', 'mismatched')
                  for eta, scale in ((0., 1.), (1., 1.), (0., 2.))] + [('mismatched', 0., 1., 5)]
  shift = report['rows'][-1]['guidance_shift']
  assert len(shift) == 5 and shift[0][0] == pytest.approx(5.) and all(value >= 0 for _, value in shift)
  assert set(report['summary']) == {' | '.join(map(str, run)) for run in runs}
