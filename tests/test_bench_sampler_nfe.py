"""benchmarks/bench_sampler_nfe.py: the digits part on untrained networks saved in the real checkpoint layout, its
one-line error without them, and the worker pool giving the rows of the sequential run."""
import argparse
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

import sampling
from tests.helpers import REPO_ROOT

DIGITS_ROW_FIELDS = {'sampler', 'grid', 'nfe', 'seed', 'class', 'scale', 'samples', 'recognised', 'fd', 'cw_fd',
                     'coarse_spread', 'fine_spread'}


def load_benchmark():
  """The benchmark script as the module `bench_sampler_nfe` (pool workers find its functions by that name)."""
  if 'bench_sampler_nfe' not in sys.modules:
    spec = importlib.util.spec_from_file_location('bench_sampler_nfe',
                                                  REPO_ROOT / 'benchmarks' / 'bench_sampler_nfe.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['bench_sampler_nfe'] = module
    spec.loader.exec_module(module)
  return sys.modules['bench_sampler_nfe']


@pytest.fixture(scope='module')
def digits_root(tmp_path_factory):
  """A `make digits` results folder holding untrained networks, written by the project's checkpoint writers."""
  from configs.digits import eval as digits_eval
  from models import checkpoint, utils as mutils
  from models.ema import ExponentialMovingAverage
  from models.reference import DigitsCNN
  root = tmp_path_factory.mktemp('digits')
  config = digits_eval.get_config()
  config.device = 'cpu'
  torch.manual_seed(0)
  score_model = mutils.create_model(config)
  for folder, model, ema in (('score', score_model, ExponentialMovingAverage(score_model.parameters(), 0.99)),
                             ('seed0/classifier_total', mutils.create_classifier(config), None),
                             ('seed0/classifier_ce', mutils.create_classifier(config), None)):
    (root / folder / 'checkpoints').mkdir(parents=True)
    checkpoint.save_checkpoint(str(root / folder / 'checkpoints' / 'checkpoint_2.pth'), model, step=2, ema=ema)
  reference = DigitsCNN(config.data.num_channels, config.classifier.classes)
  checkpoint.atomic_save({'model': reference.state_dict(), 'test_accuracy': 0.1},
                         str(root / 'reference_classifier.pth'))
  return root


def test_class_spread_splits_the_shape_from_the_strokes():
  """Class 0: a constant image and its double (shape only); class 1: a checkerboard and its negative (strokes
  only, every 2×2 block mean 0.5): per-class spreads about the class means, averaged over the two classes."""
  bench = load_benchmark()
  checker = (np.indices((4, 4)).sum(0) % 2)[..., None] * 200
  images = np.stack([np.full((4, 4, 1), 50), np.full((4, 4, 1), 100), checker, 200 - checker]).astype(np.uint8)
  coarse, fine = bench.class_spread(images, np.array([0, 0, 1, 1]), 2)
  shape_spread = 16 * (25 / 255) ** 2  # class 0: each image 25/255 from the class mean in all 16 pixels
  stroke_spread = 16 * (100 / 255) ** 2  # class 1: each pixel 100/255 from the class mean 100/255
  assert np.isclose(coarse, shape_spread / 2) and np.isclose(fine, stroke_spread / 2)


def test_noise_share_follows_a_run_step_by_step(digits_root, tmp_path):
  bench = load_benchmark()
  bench.main(['--digits', '--digits_root', str(digits_root), '--digits_noise_share', '4', '--digits_samples', '10',
              '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'noise_share_digits.json').read_text())
  assert report['eta'] == 10. and report['steps'] == 4 and report['samples'] == 10
  sigmas = [(row['sigma'], row['sigma_next']) for row in report['rows']]
  assert len(sigmas) == 3 and sigmas[0][0] == pytest.approx(5.) and sigmas[-1][1] == pytest.approx(0.01, rel=1e-3)
  assert all(a[1] == b[0] for a, b in zip(sigmas, sigmas[1:]))
  assert all(0 < row['noise_part'] and row['share'] == pytest.approx(row['noise_part'] / row['change'])
             for row in report['rows'])
  assert not (tmp_path / 'sampler_nfe_digits.json').exists()


def test_digits_rows_have_every_field_and_the_true_nfe(digits_root, tmp_path):
  bench = load_benchmark()
  out = tmp_path / 'out'
  bench.main(['--digits', '--digits_root', str(digits_root), '--samplers', 'pc', 'heun', 'dpmpp_2m:eta=3',
              '--digits_pc_nfes', '4', '--digits_nfes', '3', '--seeds', '0', '--digits_samples', '20', '--workers', '1',
              '--out', str(out)])
  report = json.loads((out / 'sampler_nfe_digits.json').read_text())
  rows = {row['sampler']: row for row in report['rows']}
  assert sorted(rows) == ['dpmpp_2m:eta=3', 'exact', 'heun', 'pc']
  assert all(DIGITS_ROW_FIELDS <= set(row) for row in rows.values())
  assert (rows['pc']['nfe'], rows['heun']['nfe'], rows['exact']['nfe']) == (4, 3, 0)  # 2 PC steps; Heun 2·2 − 1
  assert rows['dpmpp_2m:eta=3']['nfe'] == 3 and (rows['pc']['grid'], rows['heun']['grid']) == ('linear', 'rho')
  assert report['samplers'] == ['pc', 'heun', 'dpmpp_2m:eta=3'] and report['sampling']['method'] == 'dpmpp_2m'
  assert all(row['samples'] == 20 and row['class'] == 'all' and row['scale'] == 1. for row in rows.values())
  assert all(np.isfinite([row['recognised'], row['fd'], row['cw_fd']]).all() for row in rows.values())
  assert report['real_split'] == 'train' and report['reference_test_accuracy'] == 0.1
  assert (out / 'sampler_nfe_digits.png').is_file()
  again = tmp_path / 'again'
  bench.main(['--digits_from', str(out / 'sampler_nfe_digits.json'), '--out', str(again)])
  assert json.loads((again / 'sampler_nfe_digits.json').read_text())['rows'] == report['rows']


@pytest.mark.parametrize('missing', ['score/checkpoints/checkpoint_2.pth', 'reference_classifier.pth'])
def test_a_missing_digits_file_is_one_line_naming_it(digits_root, tmp_path, missing):
  import shutil
  root = tmp_path / 'digits'
  shutil.copytree(digits_root, root)
  (root / missing).unlink()
  with pytest.raises(SystemExit) as exit_:
    load_benchmark().main(['--digits', '--digits_root', str(root), '--out', str(tmp_path / 'out')])
  message = str(exit_.value.code)
  assert '\n' not in message and message.endswith('run make digits first')
  assert str(root / missing.replace('checkpoint_2', 'checkpoint_<step>')) in message


def toy_args(workers):
  return argparse.Namespace(settings=['oracle'], sigma_ends=[1.0], toy_samples=20, seeds=[0, 1],
                            samplers=['heun', 'heun:s_churn=10'], grid_nfes=[3, 6], workers=workers,
                            toy_networks=None)


def test_the_worker_pool_gives_the_rows_of_the_sequential_run():
  bench = load_benchmark()
  rows = [[{key: value for key, value in row.items() if key != 'seconds'} for row in bench.toy_part(toy_args(w))]
          for w in (1, 2)]
  assert rows[0] == rows[1] and len(rows[0]) == 2 * 2 + 2 * 2 * 2 * 2  # floor rows + sampler runs, 2 classes each


def test_help_lists_every_flag(capsys):
  with pytest.raises(SystemExit) as exit_:
    load_benchmark().parse_args(['--help'])
  assert exit_.value.code == 0 and '--digits_samples' in capsys.readouterr().out


def sample_spec(bench, spec, budget, sde, z):
  sampler, config = bench.build_for_budget(bench.toy_base(), spec, budget, sde, 1e-5, z.shape)
  torch.manual_seed(0)
  return (*sampler(lambda x, t: -x / (1 + sde.sigma(t)[:, None] ** 2), z=z), config)


def test_specs_set_the_options_and_the_budget_the_grid_points():
  import sde_lib
  bench = load_benchmark()
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5., N=10)
  z = torch.randn(8, 2) * 5
  (flow, nfe, config), (flow_again, _, _) = sample_spec(bench, 'dpmpp_2m', 10, sde, z), sample_spec(
      bench, 'dpmpp_2m:eta=0', 10, sde, z)
  (reverse_sde, sde_nfe, sde_config), (more_mixing, _, _) = (sample_spec(bench, f'dpmpp_2m:eta={eta}', 10, sde, z)
                                                             for eta in (1, 10))
  assert nfe == sde_nfe == 10 and torch.equal(flow, flow_again) and config.sampling.grid == 'rho'
  assert not torch.allclose(flow, reverse_sde) and not torch.allclose(reverse_sde, more_mixing)
  assert sde_config.sampling.dpmpp_2m.eta == 1.
  heun, heun_nfe, heun_config = sample_spec(bench, 'heun:grid=logsnr:noise_removal=False', 10, sde, z)
  assert heun_nfe == 10 and heun_config.sampling.num_steps == 6  # 5 Heun steps to σ(eps), 2 evaluations each
  assert heun_config.sampling.grid == 'logsnr' and heun_config.sampling.noise_removal is False
  assert sample_spec(bench, 'pc', 10, sde, z)[1] == 10  # 5 PC steps
  with pytest.raises(ValueError, match="'etta' is neither an option of config.sampling.dpmpp_2m"):
    bench.sampler_config(bench.toy_base(), 'dpmpp_2m:etta=1', 10)


def test_budget_steps_takes_the_most_grid_points_within_the_budget():
  bench = load_benchmark()
  assert [bench.budget_steps(lambda steps: 2 * steps - 1, budget) for budget in (5, 10, 2000)] == [3, 5, 1000]
  assert bench.budget_steps(lambda steps: steps, 7) == 7


def test_the_joint_verdict_needs_every_metric():
  bench = load_benchmark()

  def rows(sampler, nfe, recognised, fd):
    return [dict(scale=1., sampler=sampler, nfe=nfe, seed=seed, recognised=recognised + d, fd=fd + d)
            for seed, d in enumerate((-0.01, 0.01))]
  table = (rows('pc', 2000, 0.87, 22.) + rows('good', 100, 0.87, 19.) + rows('sharp_but_far', 100, 0.95, 30.)
           + rows('close_but_vague', 50, 0.70, 10.) + rows('good', 500, 0.90, 15.))
  lines = bench.joint_verdicts(table, dict(recognised=True, fd=False), bench.DIGITS_GROUPS)
  assert lines == ['(1.0,): as good as PC at 2000 on recognised and fd at ≤ 200 NFE: good (100 NFE)']


def load_oracle_benchmark():
  spec = importlib.util.spec_from_file_location('bench_oracle_guidance', REPO_ROOT / 'benchmarks' /
                                                'bench_oracle_guidance.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_exact_classifier_gives_the_exact_likelihood_score():
  import mixture
  import sde_lib
  bench = load_oracle_benchmark()
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5., N=1000)
  generator = torch.Generator().manual_seed(0)
  centres = torch.rand(12, 1, 2, 2, generator=generator, dtype=torch.float64)
  centre_labels = torch.tensor([0, 1, 2] * 4)
  x = torch.rand(6, 1, 2, 2, generator=generator, dtype=torch.float64) * 2 - 0.5
  labels = torch.tensor([0, 1, 2, 2, 1, 0])
  t = torch.full((6,), 0.4, dtype=torch.float64)
  sigma = sde.marginal_prob(x, t)[1][0].item()
  classifier = bench.ExactClassifier(sde, centres, centre_labels, 3)
  probabilities = torch.softmax(classifier(x, t), 1)
  exact = mixture.posterior_scores(x, labels, centres, centre_labels, sigma)
  gradient = sampling.log_prob_grad(classifier, x, t, labels, eps=0.)
  assert torch.allclose(probabilities.sum(1), torch.ones(6, dtype=torch.float64))
  assert torch.allclose(gradient, exact['likelihood'], atol=1e-5)  # sizes up to 27: float64 cancellation at σ 0.12
  conditional = bench.exact_conditional_score(sde, centres, centre_labels, labels)(x, t)
  assert torch.allclose(conditional, exact['conditional'])


def test_the_oracle_benchmark_samples_with_every_guide(digits_root, tmp_path):
  bench = load_oracle_benchmark()
  bench.main(['--digits_root', str(digits_root), '--seeds', '0', '--samples', '20', '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'bench_oracle_guidance.json').read_text())
  assert [row['guide'] for row in report['rows']] == list(bench.GUIDES)
  assert all(row['nfe'] == 20 and row['samples'] == 20 for row in report['rows'])
  assert all(np.isfinite([row[m] for m in bench.METRICS]).all() for row in report['rows'])
  assert report['ce_classifier'].endswith('seed0/classifier_ce/checkpoints/checkpoint_2.pth')


def test_the_oracle_benchmark_boosts_low_noise_guidance_and_follows_the_trajectories(digits_root, tmp_path):
  import sde_lib
  bench = load_oracle_benchmark()
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5., N=1000)
  t = sde.time_of_sigma(torch.tensor([0.1, 0.49, 0.51, 3.], dtype=torch.float64))
  assert bench.LowNoiseBoost(2., 0.5).scale_of(sde)(t).tolist() == [2., 2., 1., 1.]
  bench.main(['--digits_root', str(digits_root), '--seeds', '0', '--samples', '20', '--guides', '--boosts', '2@0.5',
              '--trajectory', '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'bench_oracle_guidance.json').read_text())
  assert [row['guide'] for row in report['rows']] == ['total, λ 2 below σ 0.5']
  assert set(report['trajectories']) == {'CE', 'total'}
  bands = report['trajectories']['total']
  assert {'2-inf', '0.2-0.5', '0-0.2'} <= set(bands)  # the 20-step ρ grid from σ 5 visits every band
  assert all(np.isfinite(values).all() and values[1] >= 0 for band in bands.values() for values in band.values())
