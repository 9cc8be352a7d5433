"""Do more exact likelihood scores give better conditional digits? The `make digits` sampler with exact guidance.

  python benchmarks/bench_oracle_guidance.py [--digits_root results/digits] [--seed_dir seed0] [--seeds 0 1 2]

Samples --samples digits (class = index mod 10) with the sampler of configs/digits/eval.py at λ = 1 from the score
model of a `make digits` run, guided by
  * nothing (`unguided`);
  * the CE and the total-loss classifiers of --seed_dir (`CE`, `total`);
  * the exact likelihood score of the noisy training digits, ∇log p_σ(y|x̃), as a classifier with the logits
    log p_σ(x̃|c) + log n_c (p_σ(x̃|c) the Gaussian mixture over the n_c training digits of class c, float64): the
    perfect classifier of the distribution the score model learns (`exact likelihood`);
and, without the score model, the exact conditional score ∇log p_σ(x̃|y) of the noisy training digits alone
(`exact conditional`): what the sampler gives when every score it is handed is exact (it then draws training digits).
--boosts L@S ... adds the total-loss classifier with λ = L below σ = S and 1 above (`total, λ L below σ S`).
Each row is measured as in benchmarks/bench_sampler_nfe.py --digits: recognised, FD (the reference classifier's
space), and the spreads of shape and strokes. Prints one row per run and the mean ± std over the sampling seeds, and
writes <out>/bench_oracle_guidance.json.

--trajectory: each classifier's likelihood score against the exact one at the very points that the sampler guided by
CE, and by the total-loss classifier, visits (sampling seed 0), per σ band of its steps: L (as in
run_lib_evaluation.py --posterior), the length ratio ‖∇log p_φ(y|x̃)‖ / ‖∇log p_σ(y|x̃)‖ and the mean cosine.
"""
import argparse
import dataclasses
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_sampler_nfe  # noqa: E402
import datasets  # noqa: E402
import evaluation  # noqa: E402
import fileio  # noqa: E402
import mixture  # noqa: E402
import sampling  # noqa: E402
import tables  # noqa: E402
from models import checkpoint as ckpt  # noqa: E402
from models import utils as mutils  # noqa: E402

GUIDES = ('unguided', 'CE', 'total', 'exact likelihood', 'exact conditional')
METRICS = ('recognised', 'fd', 'coarse_spread', 'fine_spread')
BANDS = ((2., math.inf), (1., 2.), (0.5, 1.), (0.2, 0.5), (0., 0.2))  # σ bands of the trajectory report


class ExactClassifier:
  """logits(x̃, t) = log p_σ(x̃|c) + log n_c over the classes c, σ = σ(t) of the SDE (one per batch): softmax gives
  p_σ(c|x̃) of the mixture over the training images, and its input-gradient the exact likelihood score."""

  def __init__(self, sde, images, labels, num_classes):
    self.sde = sde
    self.centres = [images[labels == c] for c in range(num_classes)]
    self.log_counts = torch.tensor([math.log(len(c)) for c in self.centres], dtype=torch.float64)

  def __call__(self, x, t):
    sigma = self.sde.marginal_prob(x, t)[1][0].item()
    logits = torch.stack([mixture.mixture_log_density(x, centres, sigma) for centres in self.centres], 1)
    return (logits + self.log_counts).to(x.dtype)


def exact_conditional_score(sde, images, labels, targets):
  """score(x̃, t) = ∇log p_σ(x̃|y) of the mixture over the training images of each sample's target class y."""
  def score_fn(x, t):
    sigma = sde.marginal_prob(x, t)[1][0].item()
    return mixture.conditional_scores(x, targets, images, labels, sigma).to(x.dtype)
  return score_fn


@dataclasses.dataclass(frozen=True)
class LowNoiseBoost:
  """λ = `boost` where σ(t) < `below` and 1 elsewhere: the interface of sampling.Guidance (scale_of)."""
  boost: float
  below: float

  def scale_of(self, sde):
    return lambda t: torch.where(sde.sigma(t) < self.below, self.boost, 1.).to(t.dtype)


def guided_denoiser(guide, state, exact, guidance=sampling.Guidance(1.), record=None):
  """The GuidedDenoiser of one guide (see the module doc) on the networks of `state`; `record`: a list that gets
  the (x̃, t) of every classifier call."""
  config, sde = state['config'], state['sde']
  labels = torch.as_tensor(state['labels'])
  score_model, total_classifier = state['networks']
  settings = sampling.network_settings(config)
  if guide == 'exact conditional':
    return sampling.GuidedDenoiser(sde, exact_conditional_score(sde, *exact, labels))
  classifier = {'unguided': None, 'CE': state['ce'], 'total': total_classifier,
                'exact likelihood': ExactClassifier(sde, *exact, config.classifier.classes)}[guide]
  if record is not None:
    classifier = recording(sampling.as_classifier_fn(sde, classifier), record)
  return sampling.build_denoiser(sde, score_model, classifier, None if classifier is None else labels, guidance,
                                 settings)


def recording(classifier_fn, record):
  def classifier(x, t):
    record.append((x.detach().clone(), t.detach().clone()))
    return classifier_fn(x, t)
  return classifier


def sample_row(guide, seed, state, exact, guidance=sampling.Guidance(1.), name=None, record=None):
  config = state['config']
  method = sampling.build_method(config, state['sde'], state['eps'])
  denoiser = guided_denoiser(guide, state, exact, guidance, record)
  shape = (len(state['labels']), config.data.num_channels, config.data.image_size, config.data.image_size)
  torch.manual_seed(seed)
  with torch.no_grad():
    x = method.run(denoiser, state['sde'].prior_sampling(shape))
  images = fileio.to_uint8(datasets.get_data_inverse_scaler(config)(x))
  row = dict(guide=name or guide, seed=seed, nfe=denoiser.nfe, samples=len(images), sampler=method.description)
  row.update({k: v for k, v in bench_sampler_nfe.digits_metrics(images, state['labels'], state).items()
              if k in METRICS})
  return row


def trajectory_fidelity(guide, state, exact):
  """{band: {classifier: (L, length ratio, mean cosine)}} at the points the sampler guided by `guide` visits."""
  sde, labels, record = state['sde'], torch.as_tensor(state['labels']), []
  sample_row(guide, 0, state, exact, record=record)
  classifiers = {name: sampling.as_classifier_fn(sde, model)
                 for name, model in (('CE', state['ce']), ('total', state['networks'][1]))}
  sums = {band: {name: np.zeros(3) for name in classifiers} for band in BANDS}
  cosines = {band: {name: [] for name in classifiers} for band in BANDS}
  for x, t in record:
    sigma = sde.marginal_prob(x, t)[1][0].item()
    band = next(band for band in BANDS if band[0] <= sigma < band[1])
    truth = mixture.posterior_scores(x.double(), labels, *exact, sigma)['likelihood'].flatten(1)
    for name, classifier_fn in classifiers.items():
      grad = sampling.log_prob_grad(classifier_fn, x, t, labels).double().flatten(1)
      sums[band][name] += [(grad - truth).pow(2).sum().item(), truth.pow(2).sum().item(), grad.pow(2).sum().item()]
      cosines[band][name] += torch.nn.functional.cosine_similarity(grad, truth).tolist()
  return {f'{band[0]:g}-{band[1]:g}': {name: (total[0] / total[1], math.sqrt(total[2] / total[1]),
                                              float(np.mean(cosines[band][name])))
                                       for name, total in per_band.items()}
          for band, per_band in sums.items() if cosines[band]['CE']}


def boost_rows(args, state, exact):
  """The rows of the total-loss classifier at λ = L below σ = S, per --boosts L@S and sampling seed."""
  rows = []
  for boost, below in (map(float, text.split('@')) for text in args.boosts):
    for seed in args.seeds:
      name = f'total, λ {boost:g} below σ {below:g}'
      rows.append(sample_row('total', seed, state, exact, LowNoiseBoost(boost, below), name))
      print(f'{name:18} seed {seed}: recognised {rows[-1]["recognised"]:.3f}, FD {rows[-1]["fd"]:.2f}', flush=True)
  return rows


def trajectory_report(guide, state, exact):
  """trajectory_fidelity of one guide, printed per σ band."""
  report = trajectory_fidelity(guide, state, exact)
  for band, per in report.items():
    print(f'trajectory of {guide}, σ in [{band}): ' + ' | '.join(
        f'{name}: L {l:.3f}, length {length:.2f}, cosine {cosine:.2f}' for name, (l, length, cosine) in per.items()))
  return report


def summary(rows):
  lines = ['| guide | ' + ' | '.join(METRICS) + ' |', '|---|' + '---|' * len(METRICS)]
  for guide in dict.fromkeys(row['guide'] for row in rows):
    values = [[row[m] for row in rows if row['guide'] == guide] for m in METRICS]
    lines.append(f'| {guide} | ' + ' | '.join('{:.3f} ± {:.3f}'.format(*tables.mean_and_std(v)) for v in values)
                 + ' |')
  return '\n'.join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--digits_root', default='results/digits', help='the run folder of make digits')
  parser.add_argument('--seed_dir', default='seed0', help='the seed folder of the classifiers')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='sampling seeds')
  parser.add_argument('--samples', type=int, default=250)
  parser.add_argument('--guides', nargs='*', default=list(GUIDES), choices=GUIDES)
  parser.add_argument('--boosts', nargs='*', default=[], help='L@S: the total loss at λ = L below σ = S')
  parser.add_argument('--trajectory', action='store_true', help='the classifiers along the guided trajectories')
  parser.add_argument('--out', default='results/bench_oracle_guidance')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(1)
  paths = bench_sampler_nfe.digits_files(args.digits_root, args.seed_dir, 'total')
  ce_path = bench_sampler_nfe.digits_files(args.digits_root, args.seed_dir, 'ce')['classifier']
  state = bench_sampler_nfe.digits_state(argparse.Namespace(device='cpu', digits_scale=1., digits_samples=args.samples),
                                         paths)
  ce = ckpt.restore_classifier(ce_path, mutils.create_classifier(state['config'])).eval()
  state['ce'] = mutils.to_channels_last(ce)[0]  # as digits_state loads the total-loss one
  train, train_labels = evaluation.posterior_splits(state['config'])[:2]
  rows = []
  for guide in args.guides:
    for seed in args.seeds:
      rows.append(sample_row(guide, seed, state, (train, train_labels)))
      row = rows[-1]
      print(f'{guide:18} seed {seed}: recognised {row["recognised"]:.3f}, FD {row["fd"]:.2f}, shape '
            f'{row["coarse_spread"]:.3f}, strokes {row["fine_spread"]:.3f} ({row["nfe"]} NFE)', flush=True)
  rows += boost_rows(args, state, (train, train_labels))
  trajectories = {guide: trajectory_report(guide, state, (train, train_labels))
                  for guide in (('CE', 'total') if args.trajectory else ())}
  table = summary(rows) if rows else ''
  print('\n' + table)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'bench_oracle_guidance.json')
  with open(path, 'w') as f:
    json.dump(dict(rows=rows, files=paths, ce_classifier=ce_path, table=table, trajectories=trajectories), f,
              indent=1)
  print(f'written: {path}')


if __name__ == '__main__':
  main()
