"""Can a deterministic sampler trust a digits score model? Guided samples judged by an independent judge.

  python benchmarks/bench_digits_prior.py --score S.pth [S2.pth ...] --guide C.pth [C2.pth ...] [exact]
      [--seeds 0,1,2]

For every score checkpoint and guide (a classifier checkpoint, or `exact`: the exact likelihood score of the noisy
training digits, the perfect classifier of what the score model learns), guided samples (50 per class) of:
`deterministic, λ L`, DPM-Solver++(2M) (sampling.method dpmpp_2m) as the probability-flow ODE (η = 0) with --steps
steps (one network evaluation each) on the ρ grid, second order at every step, at each guidance scale L of
--flow_scales; `make digits`, the sampler of configs/digits/eval.py at λ = --scale; with --shell_prior, the flow at
λ = --scale from prior draws rescaled to the norm σ_max·√d; with --etas, the same 2M solver at λ = --scale and each
η (η > 0 adds Langevin noise at every step). evaluation.PixelJudge rates them: an RBF-SVC fitted on every real digit
(`recognised`, class-wise averaged) and the Fréchet distance in pixel space to the training split (`pixel_fd`); the
real test digits are the floor of the FD. The criterion, per score model, guide and flow scale: the deterministic
samples' FD within 1.5× the test digits' and recognised within 0.03 of the `make digits` samples'.

Then the norm calibration of the score network (norm_calibration): whether the size of s_θ(x̃) follows the size of
the exact score from one noisy point to the next. The flow keeps whatever the network gets wrong about a draw's
norm (the SDE's fresh noise redraws it), and the shell prior removes the norm's spread from the start.
Prints one row per run as it is measured and writes <out>/bench_digits_prior.json.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import evaluation  # noqa: E402
import fileio  # noqa: E402
import mixture  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from bench_oracle_guidance import ExactClassifier  # noqa: E402
from configs.digits import eval as digits_eval  # noqa: E402
from models import checkpoint as ckpt  # noqa: E402
from models import utils as mutils  # noqa: E402

EXACT = 'exact'  # the --guide that stands for the exact likelihood score


MAKE_DIGITS = 'make digits'
FLOW = 'deterministic, λ '  # + the flow's guidance scale


def sampler_config(eta, steps, scale):
  """configs/digits/eval.py as `make digits` samples (eta None), or DPM-Solver++(2M) with that η, second order at
  every step, with `steps` steps; guidance scale `scale`."""
  config = digits_eval.get_config()
  config.sampling.scaling_factor = scale
  if eta is not None:
    config.sampling.dpmpp_2m.eta, config.sampling.num_steps = eta, steps
    config.sampling.dpmpp_2m.second_order_below = math.inf
  return config


def sampler_specs(args):
  """(name, η, λ, shell prior) of every sampler the arguments ask for; η None is the make digits sampler."""
  specs = [(f'{FLOW}{scale:g}', 0., scale, False) for scale in args.flow_scales]
  if args.shell_prior:
    specs.append(('deterministic, shell prior', 0., args.scale, True))
  specs += [(f'η {eta:g}', eta, args.scale, False) for eta in args.etas]
  return specs + [(MAKE_DIGITS, None, args.scale, False)]


def guided_samples(config, networks, seed, per_class, shell=False):
  """(uint8 NHWC samples, labels): per_class samples of every class in one batch, seeded; `shell`: every prior
  draw rescaled to the norm σ_max·√d, the mode of the prior's norm, which is what the score network assumes."""
  labels = torch.arange(config.classifier.classes).repeat_interleave(per_class)
  shape = (len(labels), config.data.num_channels, config.data.image_size, config.data.image_size)
  sde, eps = sde_lib.get_sde(config)
  sampling_fn = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), eps)
  torch.manual_seed(seed)
  z = sde.prior_sampling(shape)
  if shell:
    z = z * (sde.sigma_max * z[0].numel() ** 0.5 / z.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
  samples, nfe = sampling_fn(*networks, labels, z=z)
  return fileio.to_uint8(samples), labels.numpy(), nfe


def norm_calibration(config, score_model, sigmas, draws=4):
  """{σ: ...} how the score network's per-sample size follows the truth's, at x̃ = test digit + σz against the
  mixture score of the training digits: a_i = ⟨s_θ, s⟩/‖s‖² per point (1 for an exact network), its spread and
  its correlation with ‖z_i‖, and the spread of σ‖s_θ‖ against that of σ‖s‖ (relative to their means)."""
  sde, _ = sde_lib.get_sde(config)
  train, _, test, _ = evaluation.posterior_splits(config)
  score_fn = sampling.as_score_fn(sde, score_model)
  generator, report = torch.Generator().manual_seed(0), {}
  for sigma in sigmas:
    z = torch.randn(draws * len(test), *test.shape[1:], generator=generator, dtype=torch.float64)
    noisy = test.repeat(draws, 1, 1, 1) + sigma * z
    t = sde.time_of_sigma(torch.tensor(sigma, dtype=torch.float64)).float()
    with torch.no_grad():
      network = torch.cat([score_fn(x.float(), t.repeat(len(x))).double() for x in noisy.split(500)]).flatten(1)
    exact = mixture.mixture_score(noisy.flatten(1), train.flatten(1), sigma)
    a = (network * exact).sum(1) / (exact * exact).sum(1)
    network_norm, exact_norm = network.norm(dim=1), exact.norm(dim=1)
    report[f'{sigma:g}'] = dict(
        a_mean=a.mean().item(), a_spread=a.std().item(),
        corr_a_noise_norm=float(np.corrcoef(a.numpy(), z.flatten(1).norm(dim=1).numpy())[0, 1]),
        network_norm_spread=(network_norm.std() / network_norm.mean()).item(),
        exact_norm_spread=(exact_norm.std() / exact_norm.mean()).item())
  return report


def criterion(rows, floor_fd):
  """Per 'score | guide | deterministic, λ L': the flow rows' mean FD / floor and their recognised gap to the
  make-digits rows of the same score model and guide."""
  def mean(run, sampler, key):
    return float(np.mean([r[key] for r in rows if run_name(r) == run and r['sampler'] == sampler]))
  verdicts = {}
  for run, sampler in dict.fromkeys((run_name(r), r['sampler']) for r in rows if r['sampler'].startswith(FLOW)):
    fd_ratio = mean(run, sampler, 'pixel_fd') / floor_fd
    gap = mean(run, MAKE_DIGITS, 'recognised') - mean(run, sampler, 'recognised')
    verdicts[f'{run} | {sampler}'] = dict(
        fd_ratio=fd_ratio, recognised_gap=gap, met=bool(fd_ratio <= 1.5 and gap <= 0.03),
        **{f'{name} {key}': mean(run, name, key)
           for name in (sampler, MAKE_DIGITS) for key in ('recognised', 'pixel_fd')})
  return verdicts


def run_name(row):
  return f'{row["score"]} | {row["guide"]}'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--score', nargs='+', required=True, help='score checkpoints (a configs/digits/score.py model)')
  parser.add_argument('--guide', nargs='+', required=True,
                      help=f'classifier checkpoints, or {EXACT!r} for the exact likelihood score, each guiding a run')
  parser.add_argument('--config_overrides', default='', help='model.<field>=<int> pairs, comma separated, of the '
                      'score checkpoints\' network (e.g. nf=32)')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=20, help='steps (= evaluations) of the deterministic sampler')
  parser.add_argument('--scale', type=float, default=1., help='λ of the make digits sampler (and of --etas)')
  parser.add_argument('--flow_scales', type=float, nargs='+', default=[1., 2., 3.],
                      help='guidance scales of the deterministic sampler')
  parser.add_argument('--etas', type=float, nargs='*', default=[], help='η of extra 2M samplers (at --scale)')
  parser.add_argument('--shell_prior', action='store_true', help='also the flow from prior draws of norm σ_max·√d')
  parser.add_argument('--per_class', type=int, default=50)
  parser.add_argument('--norm_sigmas', type=float, nargs='+', default=[0.5, 1., 2., 4.],
                      help='σ of the norm calibration of the score network')
  parser.add_argument('--out', default='results/bench')
  return parser.parse_args(argv)


def model_overrides(config, text):
  for pair in filter(None, text.split(',')):
    field, value = pair.split('=')
    config.model[field] = type(config.model[field])(value)


def guide_network(config, guide):
  """The classifier of a --guide: a checkpoint's network, or the exact likelihood score of the training digits."""
  if guide == EXACT:
    train, train_labels = evaluation.posterior_splits(config)[:2]
    return ExactClassifier(sde_lib.get_sde(config)[0], train, train_labels, config.classifier.classes)
  return ckpt.restore_classifier(guide, mutils.create_classifier(config)).eval()


def sample_rows(args, score, judge):
  """Rows (recognised, pixel FD) of every guide, sampler and seed with the score checkpoint `score`; the score
  network."""
  rows = []
  config = sampler_config(None, args.steps, args.scale)
  model_overrides(config, args.config_overrides)
  score_model = ckpt.restore_score_model(score, mutils.create_model(config)).eval()
  for guide in args.guide:
    networks = (score_model, guide_network(config, guide))
    for name, eta, scale, shell in sampler_specs(args):
      config = sampler_config(eta, args.steps, scale)
      model_overrides(config, args.config_overrides)
      for seed in map(int, args.seeds.split(',')):
        begin = time.time()
        images, labels, nfe = guided_samples(config, networks, seed, args.per_class, shell=shell)
        row = dict(score=score, guide=guide, sampler=name, scale=scale, nfe=nfe, seed=seed, **judge(images, labels),
                   seconds=round(time.time() - begin, 1))
        rows.append(row)
        print(f'{run_name(row)} | {name:26s} | NFE {nfe:4d} | seed {seed} | recognised {row["recognised"]:.3f} | '
              f'pixel FD {row["pixel_fd"]:.3f} | {row["seconds"]} s', flush=True)
  return rows, score_model


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(1)
  judge = evaluation.PixelJudge(digits_eval.get_config())
  test_images, _ = datasets.load_split(digits_eval.get_config(), 'test')
  floor_fd = evaluation.frechet_distance(judge.train_pixels, judge.pixels(test_images))
  print(f'real test digits: pixel FD {floor_fd:.3f} (the floor)', flush=True)
  rows, calibration = [], {}
  for score in args.score:
    score_rows, score_model = sample_rows(args, score, judge)
    rows += score_rows
    calibration[score] = norm_calibration(sampler_config(None, args.steps, args.scale), score_model,
                                          args.norm_sigmas)
    for sigma, row in calibration[score].items():
      print(f'{score} | σ {sigma}: a = <s_θ, s>/|s|² {row["a_mean"]:.3f} ± {row["a_spread"]:.3f}, corr(a, |z|) '
            f'{row["corr_a_noise_norm"]:+.3f}; relative spread of |s_θ| {row["network_norm_spread"]:.3f}, of the '
            f'exact |s| {row["exact_norm_spread"]:.3f}', flush=True)
  verdicts = criterion(rows, floor_fd)
  for run, verdict in verdicts.items():
    print(f'{run}: FD {verdict["fd_ratio"]:.2f}× the floor, recognised '
          f'{verdict["recognised_gap"]:+.3f} below make digits -> {"met" if verdict["met"] else "not met"}')
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'bench_digits_prior.json'), 'w') as file:
    json.dump(dict(rows=rows, floor_pixel_fd=floor_fd, verdicts=verdicts, norm_calibration=calibration,
                   args=vars(args)), file, indent=1)


if __name__ == '__main__':
  main()
