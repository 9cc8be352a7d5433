"""Does the probability-flow ODE follow classifier guidance? Exact scores only, on the digits, no networks.

  python benchmarks/bench_flow_guidance.py [--seeds 0,1,2] [--etas 0 0.5 1 10] [--flow_scales 1 2 3]
      [--score S.pth]

Guided sampling adds λ∇log p_σ(y|x̃) to a prior score. Here both are exact scores of noisy training digits (Gaussian
mixtures, mixture.py): the prior of a random half A of every class, and the likelihood either of the same half A
(`consistent`: their sum is the exact conditional score of half A) or of the other half B (`mismatched`: two
equally exact fields that disagree only on which digits exist, as a learnt prior and a learnt classifier always
do). Each pair samples with DPM-Solver++(2M) (20 steps, second order at every step, the ρ grid of
configs/digits/eval.py) at every η of --etas (η = 0 is the probability-flow ODE) at λ = 1, and as the flow at every
λ of --flow_scales; evaluation.PixelJudge rates the samples (recognised: the RBF-SVC of every real digit sees the
asked-for digit, class-wise averaged; pixel FD to the training split).

With --score, that score model unguided at every η, and where along σ the flow loses with it guided by the exact
likelihood score of every training digit: the flow with the exact conditional score of the training digits below
σ_s and the model's guided score above (and the reverse), per σ_s of --switch_sigmas.
Then the mismatched pair's flow at each step count of --flow_steps, with the guidance's shift of the denoised image,
σ²∇log p_σ(y|x̃), at every σ the solver visits.
Prints one row per run as it is measured and writes <out>/bench_flow_guidance.json.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import evaluation  # noqa: E402
import fileio  # noqa: E402
import mixture  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
import tables  # noqa: E402
from bench_digits_prior import sampler_config  # noqa: E402
from bench_oracle_guidance import ExactClassifier, exact_conditional_score  # noqa: E402
from models import checkpoint as ckpt  # noqa: E402
from models import utils as mutils  # noqa: E402


def sigma_of(sde, t):
  return sde.marginal_prob(torch.zeros(1), t[:1])[1].item()


def exact_prior_score(sde, images):
  """score(x̃, t) = ∇log p_σ(x̃) of the mixture over `images`."""
  def score_fn(x, t):
    flat = mixture.mixture_score(x.double().flatten(1), images.flatten(1), sigma_of(sde, t))
    return flat.reshape(x.shape).to(x.dtype)
  return score_fn


def recording_shift(sde, prior, likelihood, labels, record):
  """The guided score prior + ∇log p(y|x̃) that appends (σ, RMS per pixel of σ²∇log p(y|x̃)) to `record` at every
  call: how far the guidance moves the denoised image D = x̃ + σ²·score at that σ."""
  def score_fn(x, t):
    sigma, gradient = sigma_of(sde, t), sampling.log_prob_grad(likelihood, x, t, labels)
    record.append((sigma, sigma ** 2 * gradient.flatten(1).pow(2).mean(1).sqrt().mean().item()))
    return prior(x, t) + gradient
  return score_fn


def switched(sde, below, above, switch_sigma):
  """The score `below` where σ(t) < switch_sigma, `above` elsewhere (one σ per batch)."""
  return lambda x, t: (below if sigma_of(sde, t) < switch_sigma else above)(x, t)


def judged_samples(judge, score_fn, labels, eta, steps, seed):
  """{recognised, pixel_fd} of the 2M solver with η on the guided score `score_fn` (λ already in it)."""
  config = sampler_config(eta, steps, 1.)
  sde, eps = sde_lib.get_sde(config)
  method = sampling.build_method(config, sde, eps)
  torch.manual_seed(seed)
  with torch.no_grad():
    x = method.run(sampling.GuidedDenoiser(sde, score_fn), sde.prior_sampling((len(labels), 1, 8, 8)))
  return judge(fileio.to_uint8(datasets.get_data_inverse_scaler(config)(x)), labels.numpy())


def oracle_fields(sde, train, train_labels, labels):
  """{name: (prior score, likelihood 'classifier')} of the consistent and the mismatched pair."""
  half_a = evaluation.half_of_each_class(train_labels, torch.Generator().manual_seed(0))
  prior = exact_prior_score(sde, train[half_a])
  return {'consistent': (prior, ExactClassifier(sde, train[half_a], train_labels[half_a], 10)),
          'mismatched': (prior, ExactClassifier(sde, train[~half_a], train_labels[~half_a], 10))}


def pair_runs(args, fields, labels):
  """(pair, η, λ, guided score) of every run of the two oracle pairs."""
  for name, (prior, likelihood) in fields.items():
    for eta in args.etas:
      yield name, eta, 1., sampling.get_guided_score_fn(prior, likelihood, labels, 1.)
    for scale in args.flow_scales:
      if scale != 1. or 0. not in args.etas:
        yield name, 0., scale, sampling.get_guided_score_fn(prior, likelihood, labels, scale)


def switch_runs(args, sde, config, train, train_labels, labels):
  """(pair, η, λ, score) of the flow that switches between the model and the exact conditional score at σ_s."""
  score_model = ckpt.restore_score_model(args.score, mutils.create_model(config)).eval()
  prior = sampling.as_score_fn(sde, score_model)
  model = sampling.get_guided_score_fn(prior, ExactClassifier(sde, train, train_labels, 10), labels, 1.)
  exact = exact_conditional_score(sde, train, train_labels, labels)
  for eta in args.etas:
    yield 'model unguided', eta, 1., prior
  yield 'model + exact likelihood', 0., 1., model
  for switch_sigma in args.switch_sigmas:
    yield f'exact conditional below σ {switch_sigma:g}, model above', 0., 1., switched(sde, exact, model, switch_sigma)
    yield f'model below σ {switch_sigma:g}, exact conditional above', 0., 1., switched(sde, model, exact, switch_sigma)


def steps_rows(args, sde, fields, judge, labels):
  """The mismatched pair's flow (λ = 1) at each of --flow_steps: recognised, pixel FD and the guidance shift
  (mean over the samples of the RMS of σ²∇log p(y|x̃)) at each σ the solver visits."""
  prior, likelihood = fields['mismatched']
  rows = []
  for steps in args.flow_steps:
    for seed in map(int, args.seeds.split(',')):
      record = []
      judged = judged_samples(judge, recording_shift(sde, prior, likelihood, labels, record), labels, 0., steps, seed)
      rows.append(dict(pair='mismatched', eta=0., scale=1., steps=steps, seed=seed, **judged,
                       guidance_shift=[(round(sigma, 4), round(shift, 5)) for sigma, shift in record]))
      print(f'mismatched, {steps} steps | η 0 | λ 1 | seed {seed} | recognised {judged["recognised"]:.3f} | pixel FD '
            f'{judged["pixel_fd"]:.3f} | guidance shift ' + ', '.join(
                f'{shift:.3f} at σ {sigma:.2g}' for sigma, shift in record[::max(1, len(record) // 6)]), flush=True)
  return rows


def judged_rows(args, judge, labels, name, eta, scale, score_fn):
  """The rows of one run (pair, η, λ, score) at every seed, each printed as it is measured."""
  rows = []
  for seed in map(int, args.seeds.split(',')):
    begin = time.time()
    judged = judged_samples(judge, score_fn, labels, eta, args.steps, seed)
    rows.append(dict(pair=name, eta=eta, scale=scale, seed=seed, **judged, seconds=round(time.time() - begin, 1)))
    print(f'{name:45s} | η {eta:4g} | λ {scale:g} | seed {seed} | recognised {judged["recognised"]:.3f} | '
          f'pixel FD {judged["pixel_fd"]:.3f} | {rows[-1]["seconds"]} s', flush=True)
  return rows


def summarise(rows, steps):
  """{'pair | η | λ | steps': {recognised, pixel_fd: (mean, std) over the seeds}}, printed."""
  def key_of(row):
    return row['pair'], row['eta'], row['scale'], row.get('steps', steps)
  summary = {}
  for key in dict.fromkeys(map(key_of, rows)):
    group = [row for row in rows if key_of(row) == key]
    summary[' | '.join(map(str, key))] = values = {
        metric: tables.mean_and_std([row[metric] for row in group]) for metric in ('recognised', 'pixel_fd')}
    print(f'{" | ".join(map(str, key))}: recognised {values["recognised"][0]:.3f} ± '
          f'{values["recognised"][1]:.3f}, pixel FD {values["pixel_fd"][0]:.3f} ± {values["pixel_fd"][1]:.3f}')
  return summary


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--per_class', type=int, default=50)
  parser.add_argument('--etas', type=float, nargs='+', default=[0., 0.5, 1., 10.])
  parser.add_argument('--flow_scales', type=float, nargs='+', default=[1., 2., 3.])
  parser.add_argument('--flow_steps', type=int, nargs='+', default=[10, 50, 200],
                      help='further step counts of the flow of the mismatched pair at λ = 1, with the guidance shift along it')
  parser.add_argument('--score', help='a configs/digits/score.py checkpoint: also the σ-switched flows')
  parser.add_argument('--switch_sigmas', type=float, nargs='+', default=[0.2, 0.5, 1., 2.])
  parser.add_argument('--out', default='results/bench')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(1)
  config = sampler_config(None, args.steps, 1.)
  sde = sde_lib.get_sde(config)[0]
  train, train_labels = evaluation.posterior_splits(config)[:2]
  judge = evaluation.PixelJudge(config)
  labels = torch.arange(config.classifier.classes).repeat_interleave(args.per_class)
  fields = oracle_fields(sde, train, train_labels, labels)
  runs = list(pair_runs(args, fields, labels))
  if args.score:
    runs += list(switch_runs(args, sde, config, train, train_labels, labels))
  rows = [row for run in runs for row in judged_rows(args, judge, labels, *run)]
  rows += steps_rows(args, sde, fields, judge, labels)
  summary = summarise(rows, args.steps)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'bench_flow_guidance.json'), 'w') as file:
    json.dump(dict(rows=rows, summary=summary, args=vars(args)), file, indent=1)


if __name__ == '__main__':
  main()
