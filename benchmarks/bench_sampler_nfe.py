"""Sample quality against network evaluations (NFE) of the guided samplers: PC and the grid samplers.

  python benchmarks/bench_sampler_nfe.py --toy        # the moons against their exact target (≤ 10 min on 2 cores)
  python benchmarks/bench_sampler_nfe.py --images     # guided images: digits once `make digits` exists, else the
                                                      # synthetic 3-class images of bench_sampling.py

Toy: for each class, the sliced-Wasserstein distance (and class-wise PRDC) between 1 000 samples and 1 000 exact
draws of the target p_σ(x|y), (a) with the exact posterior score of the target (a Gaussian mixture: this isolates the
sampler's own error) and (b) with the trained score network + total-loss (DLSM) classifier of `make demo`, at the
toy's σ_end = 7.5 and at σ_end = 1.0. Every sampler starts from exact draws of p_σmax(x|y) at σ_max = 10: the prior
N(0, σ_max²) is not that marginal (the moons span about ±20), which a deterministic sampler cannot hide.
The oracle's target is the mixture on every 50th point of a class (100 per class, 0.63 apart on the arc): at σ ≥ 1 it
is the same crescent as the full set, and its exact score costs 50× less.
Writes <out>/sampler_nfe_<part>.json — rows {sampler, grid, nfe, seed, class, sigma_end, score, metric: value} — and a
plot of the metric against NFE beside it, and prints the table.
"""
import argparse
import itertools
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sampling  # noqa: E402
import sde_lib  # noqa: E402
import toy  # noqa: E402
from toy import data as toy_data  # noqa: E402
from toy import metrics as toy_metrics  # noqa: E402
from toy import samplers as toy_samplers  # noqa: E402
from models import utils as mutils  # noqa: E402

# name: (predictor, corrector, grid, grid steps for an NFE budget). PC evaluates twice per step; Heun twice but once
# on its last step (2N − 1); DPM-Solver++(2M) once.
SAMPLERS = {
    'pc': ('reverse_diffusion', 'langevin', 'linear', lambda nfe: nfe // 2),
    'heun': ('heun', 'none', 'rho', lambda nfe: (nfe + 1) // 2),
    'heun_churn': ('heun_churn', 'none', 'rho', lambda nfe: (nfe + 1) // 2),
    'dpm_solver_2m': ('dpm_solver_2m', 'none', 'rho', lambda nfe: nfe),
}
CHURN = dict(S_churn=10., S_tmin=0., S_tmax=1e9, S_noise=1.)
PC_NFES = (10, 20, 50, 100, 200, 500, 1000, 2000)
GRID_NFES = (10, 20, 50, 100, 200, 500)


def build_sampler(name, sde_of_steps, nfe, shape, eps, device='cpu', scale=1., snr=0.16):
  """(sampler, its SDE) of `name` for an NFE budget, on the SDE discretised with the grid's steps."""
  predictor, corrector, grid, steps_of = SAMPLERS[name]
  steps = steps_of(nfe)
  sde = sde_of_steps(steps)
  options = dict(CHURN, num_steps=steps) if predictor == 'heun_churn' else None
  sampler = sampling.get_pc_sampler(sde, shape, predictor, corrector, lambda x: x, snr, n_steps=1,
                                    continuous=True, denoise=True, eps=eps, device=device, scale=scale, grid=grid,
                                    num_steps=steps, predictor_options=options)
  return sampler, sde


# ---------------------------------------------------------------------------------------------- toy target

def exact_draws(centres, sigma, num_samples, generator):
  """num_samples draws of the mixture of N(c, σ²I) over the centres, float32."""
  index = torch.randint(len(centres), (num_samples,), generator=generator)
  return (centres[index] + sigma * torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)).float()


def mixture_posterior_score(x, centres, sigma):
  """Exact score of the mixture of N(c, σ²I) over the centres, computed with a stable softmax (float64)."""
  x, sigma = x.double(), sigma.double()[:, None]
  logits = (x @ centres.T - 0.5 * (centres ** 2).sum(1)) / sigma ** 2
  return ((torch.softmax(logits, dim=1) @ centres - x) / sigma ** 2).float()


class ToyTarget:
  """The class-conditional targets of one toy setting: centres per class, the posterior score, exact draws."""

  def __init__(self, centres_per_class, num_samples):
    self.centres = centres_per_class
    self.num_samples = num_samples
    self.labels = torch.arange(len(centres_per_class)).repeat_interleave(num_samples)

  def draws(self, sigma, generator):
    return [exact_draws(c, sigma, self.num_samples, generator) for c in self.centres]

  def score(self, x, sigma):
    n = self.num_samples
    return torch.cat([mixture_posterior_score(x[k * n:(k + 1) * n], c, sigma[k * n:(k + 1) * n])
                      for k, c in enumerate(self.centres)])


def class_centres(every=1):
  """Per class the float64 moons points, every `every`-th of them."""
  positions, labels = toy_data.moons_dataset('all')
  positions = torch.as_tensor(positions)
  return [positions[torch.as_tensor(labels) == c][::every] for c in range(len(toy.CLASS_NAMES))]


# ---------------------------------------------------------------------------------------------- toy metrics

def sliced_wasserstein(a, b, num_directions=128):
  """SW₂ between two equal-size 2-D point sets: sqrt of the mean over evenly spaced directions of W₂² of the
  projections (sorted projections matched in order)."""
  angles = torch.arange(num_directions, dtype=torch.float64) * math.pi / num_directions
  directions = torch.stack([angles.cos(), angles.sin()])
  pa, pb = (torch.sort(p.double() @ directions, dim=0).values for p in (a, b))
  return ((pa - pb) ** 2).mean().sqrt().item()


def class_metrics(samples, reference, prdc_reference):
  """{'sw', 'precision', 'recall', 'density', 'coverage'} of one class's samples."""
  metrics = {'sw': sliced_wasserstein(samples, reference)}
  metrics.update(toy_metrics.classwise_prdc([prdc_reference.numpy()], [samples.numpy()])[0])
  return {key: float(value) for key, value in metrics.items()}


# ---------------------------------------------------------------------------------------------- toy runs

def trained_networks(workdir, device='cpu'):
  """The score network and total-loss classifier of `make demo` in workdir, trained there if missing."""
  import run_lib_toy
  from configs.toy.demo import get_config
  config = get_config()
  config.device = device
  paths = run_lib_toy.train_stages(config, workdir, {}, stages=('score', 'classifier_total'))
  networks = run_lib_toy.load_networks(config, paths)
  return networks['score'], networks['classifier_total']


def score_functions(setting, sde, sigma_end, target, networks):
  """(score_fn, classifier_fn) of the sampler's time t; the networks see σ = sqrt(σ_end² + σ_extra(t)²)."""
  def total_sigma(t):
    return torch.sqrt(sde.marginal_std(t) ** 2 + sigma_end ** 2)
  if setting == 'oracle':
    return (lambda x, t: target.score(x, total_sigma(t))), None
  score_net, classifier = networks
  return (lambda x, t: score_net(x, total_sigma(t))), (lambda x, t: classifier(x, total_sigma(t)))


def toy_run(name, nfe, seed, setting, sigma_end, target, networks, config):
  """One sampler run for both classes: (samples per class, true NFE, seconds)."""
  sigma_max, cfg = config.model.sigma_max, config.sampling
  generator = torch.Generator().manual_seed(seed)
  start = torch.cat(target.draws(sigma_max, generator))
  sampler, sde = build_sampler(name, lambda steps: toy_samplers.annealed_sampler_sde(
      sigma_end, sigma_max, cfg.sigma_extra_min, steps), nfe, start.shape, cfg.eps)
  score_fn, classifier_fn = score_functions(setting, sde, sigma_end, target, networks)
  torch.manual_seed(seed)
  begin = time.perf_counter()
  x, true_nfe = sampler(score_fn, classifier_fn, None if classifier_fn is None else target.labels, z=start)
  return x.split(target.num_samples), true_nfe, time.perf_counter() - begin


def toy_rows_of_run(name, grid_nfe, seed, setting, sigma_end, target, networks, config, references):
  samples, nfe, seconds = toy_run(name, grid_nfe, seed, setting, sigma_end, target, networks, config)
  rows = []
  for c, points in enumerate(samples):
    row = dict(sampler=name, grid=SAMPLERS[name][2], nfe=nfe, seed=seed, **{'class': c}, sigma_end=sigma_end,
               score=setting, seconds=seconds)
    row.update(class_metrics(points, *references[c]))
    rows.append(row)
  return rows


def floor_rows(seeds, setting, sigma_end, target, references):
  """Exact draws scored like samples: the metrics' floor at this sample size."""
  rows = []
  for seed in seeds:
    draws = target.draws(sigma_end, torch.Generator().manual_seed(10_000 + seed))
    for c, points in enumerate(draws):
      row = dict(sampler='exact', grid='-', nfe=0, seed=seed, **{'class': c}, sigma_end=sigma_end, score=setting)
      row.update(class_metrics(points, *references[c]))
      rows.append(row)
  return rows


def toy_part(args):
  from configs.toy.demo import get_config
  config = get_config()
  networks = trained_networks(args.toy_networks)
  targets = {'oracle': ToyTarget(class_centres(every=50), args.toy_samples),
             'trained': ToyTarget(class_centres(), args.toy_samples)}
  rows, begin = [], time.perf_counter()
  for setting in args.settings:
    for sigma_end in args.sigma_ends:
      target = targets[setting]
      generator = torch.Generator().manual_seed(123)
      references = list(zip(target.draws(sigma_end, generator), target.draws(sigma_end, generator)))
      rows += floor_rows(args.seeds, setting, sigma_end, target, references)
      for name in args.samplers:
        for nfe in (PC_NFES if name == 'pc' else args.grid_nfes):
          for seed in args.seeds:
            rows += toy_rows_of_run(name, nfe, seed, setting, sigma_end, target, networks, config, references)
        print(f'  {setting:8} σ_end {sigma_end:<4g} {name:14} done at {time.perf_counter() - begin:5.0f} s',
              flush=True)
  return rows


# ---------------------------------------------------------------------------------------------- report

TOY_GROUPS = ('score', 'sigma_end', 'sampler', 'nfe')
IMAGE_GROUPS = ('scale', 'sampler', 'nfe')


def summarise(rows, metric, group_keys):
  """{group: (mean over seeds of the class-mean metric, std over seeds)}; groups end with (sampler, nfe)."""
  per_seed = {}
  for row in rows:
    key = tuple(row[k] for k in group_keys)
    per_seed.setdefault(key, {}).setdefault(row['seed'], []).append(row[metric])
  return {key: (float(np.mean([np.mean(v) for v in seeds.values()])),
                float(np.std([np.mean(v) for v in seeds.values()])))
          for key, seeds in per_seed.items()}


def print_table(rows, metrics, group_keys):
  stats = {metric: summarise(rows, metric, group_keys) for metric in metrics}
  print('\n' + ''.join(f'{k:>14}' for k in group_keys) + ''.join(f'{m:>19}' for m in metrics))
  for key in sorted(stats[metrics[0]], key=lambda k: (k[:-2], k[-2] != 'exact', k[-2], k[-1])):
    cells = ''.join(f'{stats[m][key][0]:>11.3f} ± {stats[m][key][1]:<5.3f}' for m in metrics)
    print(''.join(f'{v:>14}' for v in key) + cells)


def markdown_table(rows, metric, group_keys):
  """A Markdown table of the metric (mean ± std over seeds): one row per (sampler, NFE), one column per panel."""
  stats = summarise(rows, metric, group_keys)
  panels = sorted({k[:-2] for k in stats})
  lines = ['| sampler | NFE | ' + ' | '.join(', '.join(map(str, p)) for p in panels) + ' |',
           '|---|---|' + '---|' * len(panels)]
  for name, nfe in sorted({k[-2:] for k in stats}, key=lambda k: (k[0] != 'exact', k[0] != 'pc', k[0], k[1])):
    cells = [stats.get(p + (name, nfe)) for p in panels]
    lines.append(f'| {name} | {nfe} | ' + ' | '.join('' if c is None else f'{c[0]:.2f} ± {c[1]:.2f}' for c in cells)
                 + ' |')
  return '\n'.join(lines)


def verdicts(rows, metric, group_keys, higher_is_better=False, budget=200, reference_nfe=2000):
  """Per panel: the best non-PC sampler at ≤ budget NFE against PC at reference_nfe (mean ± std over seeds)."""
  stats, sign = summarise(rows, metric, group_keys), (-1 if higher_is_better else 1)
  lines = []
  for panel in sorted({k[:-2] for k in stats}):
    pc = stats.get(panel + ('pc', reference_nfe))
    candidates = [(sign * v[0], v[1], k[-2], k[-1]) for k, v in stats.items()
                  if k[:-2] == panel and k[-2] not in ('pc', 'exact', 'ode_rk45') and k[-1] <= budget]
    if pc is None or not candidates:
      continue
    best = min(candidates)
    verdict = 'yes' if best[0] <= sign * pc[0] + max(pc[1], best[1]) else 'NO'
    lines.append(f'{panel}: best at ≤ {budget} NFE {best[2]} ({best[3]} NFE) {metric} {sign * best[0]:.3f} ± '
                 f'{best[1]:.3f}; PC at {reference_nfe}: {pc[0]:.3f} ± {pc[1]:.3f}; as good within the spread: {verdict}')
  return lines


def plot(rows, path, metric, group_keys, ylabel, log_y=True):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  stats = summarise(rows, metric, group_keys)
  panels = sorted({k[:-2] for k in stats})
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    for name in sorted({k[-2] for k in stats if k[:-2] == panel} - {'exact'}):
      points = sorted((k[-1], *v) for k, v in stats.items() if k[:-2] + (k[-2],) == panel + (name,))
      nfe, mean, std = np.array(points).T
      colour = f'C{(list(SAMPLERS) + ["ode_rk45"]).index(name)}'  # one colour per sampler in every panel
      ax.errorbar(nfe, mean, yerr=std, marker='o', ms=3, capsize=2, label=name, color=colour)
    floor = stats.get(panel + ('exact', 0))
    if floor:
      ax.axhline(floor[0], color='grey', ls='--', lw=1, label='exact draws')
    ax.set_xscale('log')
    if log_y:
      ax.set_yscale('log')
    ax.set_xlabel('network evaluations (NFE)'), ax.set_ylabel(ylabel)
    ax.set_title(', '.join(f'{k} {v}' for k, v in zip(group_keys, panel)), fontsize=9)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_json(rows, out_dir, part, extra):
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'sampler_nfe_{part}.json')
  with open(path, 'w') as f:
    json.dump(dict(extra, rows=rows), f, indent=1)
  return path


# ---------------------------------------------------------------------------------------------- images

IMAGE_NFES = (20, 50, 100, 200)


def image_networks(args, config, sde, data, device):
  """The small NCSN++ and classifier of bench_sampling's quality experiment, trained once and kept in args.out."""
  import bench_sampling
  path = os.path.join(args.out, f'image_networks_{args.train_steps}.pt')
  if os.path.exists(path):
    score_model, classifier = mutils.create_model(config), mutils.create_classifier(config)
    states = torch.load(path, map_location=device, weights_only=True)
    score_model.load_state_dict(states['score']), classifier.load_state_dict(states['classifier'])
  else:
    score_model, classifier = bench_sampling.train_small_models(config, sde, data, args.train_steps, 32, device)
    os.makedirs(args.out, exist_ok=True)
    torch.save({'score': score_model.state_dict(), 'classifier': classifier.state_dict()}, path)
  return sampling.to_channels_last(score_model.eval(), classifier.eval())


def image_run(name, nfe, seed, scale, sde, eps, networks, labels, device):
  """(samples, true NFE): `name` is a key of SAMPLERS, or 'ode_rk45' (nfe: its tolerance exponent, e.g. 5)."""
  shape = (len(labels), 3, 32, 32)
  if name == 'ode_rk45':
    sampler = sampling.get_ode_sampler(sde, shape, lambda x: x, denoise=True, rtol=10. ** -nfe, atol=10. ** -nfe,
                                       eps=eps, device=device, scale=scale)
  else:
    sampler = build_sampler(name, lambda steps: sde_lib.VESDE(sde.sigma_min, sde.sigma_max, N=steps), nfe, shape,
                            eps, device=device, scale=scale)[0]
  torch.manual_seed(seed)
  return sampler(*networks, labels)


def image_part(args):
  """Guided samples of the synthetic 3-class images: colour-oracle accuracy and class Fréchet distance per
  sampler and NFE (bench_sampling.quality_metrics), PC at 2 000 NFE as the reference."""
  import bench_sampling
  device = torch.device(args.device)
  data = bench_sampling.synthetic_images(3000, torch.Generator().manual_seed(0))
  config = bench_sampling.small_training_config(device)
  sde, eps = sde_lib.get_sde(config)
  networks = image_networks(args, config, sde, data, device)
  labels = torch.arange(args.image_batch, device=device) % 3
  runs = [('pc', nfe) for nfe in args.image_pc_nfes] + [(name, nfe) for name in args.samplers if name != 'pc'
                                                 for nfe in args.image_nfes] + [('ode_rk45', 5)]
  rows, begin = [], time.perf_counter()
  for scale in args.image_scales:
    for (name, nfe), seed in itertools.product(runs, args.seeds):
      samples, true_nfe = image_run(name, nfe, seed, scale, sde, eps, networks, labels, device)
      accuracy, fd, mean = bench_sampling.quality_metrics(samples, labels, data)
      rows.append(dict(sampler=name, grid=SAMPLERS.get(name, ('', '', 'adaptive'))[2], nfe=true_nfe, seed=seed,
                       scale=scale, accuracy=accuracy, fd=fd, mean_pixel=mean, **{'class': 'all'}))
      print(f'  scale {scale:g} {name:14} NFE {true_nfe:5} seed {seed}: accuracy {accuracy:.3f}, class FD {fd:.3f} '
            f'({time.perf_counter() - begin:.0f} s)', flush=True)
  return rows


def report_images(args):
  begin = time.perf_counter()
  rows = image_part(args)
  seconds = time.perf_counter() - begin
  print_table(rows, ('accuracy', 'fd'), IMAGE_GROUPS)
  print('\n' + '\n'.join(verdicts(rows, 'accuracy', IMAGE_GROUPS, higher_is_better=True)
                          + verdicts(rows, 'fd', IMAGE_GROUPS)))
  paths = [write_json(rows, args.out, 'images', dict(seconds=seconds, load=os.getloadavg(), churn=CHURN,
                                                     train_steps=args.train_steps)),
           plot(rows, os.path.join(args.out, 'sampler_nfe_images.png'), 'fd', IMAGE_GROUPS, 'class Fréchet distance')]
  print(f'\nimage part: {seconds:.0f} s (load average {os.getloadavg()[0]:.1f}); ' + ', '.join(paths))


def report_toy(args):
  begin, cpu = time.perf_counter(), time.process_time()
  rows = toy_part(args)
  seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
  print_toy(rows, args.out, dict(seconds=seconds, cpu_seconds=cpu, load=os.getloadavg(), churn=CHURN))
  print(f'\ntoy part: {seconds:.0f} s wall, {cpu:.0f} s CPU (load average {os.getloadavg()[0]:.1f})')


def print_toy(rows, out, extra):
  """Table, verdicts, JSON and plot of toy rows."""
  print_table(rows, ('sw', 'precision', 'recall'), TOY_GROUPS)
  print('\n' + '\n'.join(verdicts(rows, 'sw', TOY_GROUPS)))
  print('\n' + markdown_table(rows, 'sw', TOY_GROUPS))
  paths = [write_json(rows, out, 'toy', extra),
           plot(rows, os.path.join(out, 'sampler_nfe_toy.png'), 'sw', TOY_GROUPS, 'sliced Wasserstein to exact draws')]
  print('written: ' + ', '.join(paths))


def report_toy_files(paths, out):
  """The toy report of rows from earlier runs' JSON files (e.g. the settings run as separate processes)."""
  rows, parts = [], []
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    rows += part.pop('rows')
    parts.append(dict(part, file=path))
  print_toy(rows, out, dict(parts=parts))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--toy', action='store_true', help='the moons part')
  parser.add_argument('--images', action='store_true', help='the guided-image part')
  parser.add_argument('--toy_from', nargs='+', help='toy: report the rows of these JSON files (no sampling)')
  parser.add_argument('--out', default='results/bench_sampler_nfe', help='folder of the JSON files and plots')
  parser.add_argument('--toy_networks', default='results/bench_sampler_nfe/toy_networks',
                      help='run_lib_toy workdir with the demo score and total-loss stages (trained if missing; '
                           'the toy_demo of `make demo` works)')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--samplers', nargs='+', default=list(SAMPLERS), choices=list(SAMPLERS))
  parser.add_argument('--grid_nfes', type=int, nargs='+', default=list(GRID_NFES), help='NFEs of the non-PC samplers')
  parser.add_argument('--settings', nargs='+', default=['oracle', 'trained'], choices=['oracle', 'trained'])
  parser.add_argument('--sigma_ends', type=float, nargs='+', default=[7.5, 1.0])
  parser.add_argument('--toy_samples', type=int, default=1000, help='samples per class and run')
  parser.add_argument('--num_threads', type=int, default=1, help='torch CPU threads (the toy nets gain little)')
  parser.add_argument('--device', default='cpu', help='images: torch device')
  parser.add_argument('--train_steps', type=int, default=800, help='images: training steps per network')
  parser.add_argument('--image_batch', type=int, default=96, help='images: samples per run')
  parser.add_argument('--image_pc_nfes', type=int, nargs='+', default=[200, 2000], help='images: PC NFEs')
  parser.add_argument('--image_nfes', type=int, nargs='+', default=list(IMAGE_NFES), help='images: non-PC NFEs')
  parser.add_argument('--image_scales', type=float, nargs='+', default=[4.], help='images: guidance scales')
  return parser.parse_args()


def main():
  args = parse_args()
  if args.toy_from:
    return report_toy_files(args.toy_from, args.out)
  if not (args.toy or args.images):
    sys.exit('choose --toy and/or --images')
  torch.set_num_threads(args.num_threads)
  if args.toy:
    report_toy(args)
  if args.images:
    report_images(args)


if __name__ == '__main__':
  main()
