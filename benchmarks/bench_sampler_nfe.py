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
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sampling  # noqa: E402
import toy_lib  # noqa: E402

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


def build_sampler(name, sde_of_steps, nfe, batch, eps, snr=0.16):
  """(sampler, its SDE) of `name` for an NFE budget, on the SDE discretised with the grid's steps."""
  predictor, corrector, grid, steps_of = SAMPLERS[name]
  steps = steps_of(nfe)
  sde = sde_of_steps(steps)
  options = dict(CHURN, num_steps=steps) if predictor == 'heun_churn' else None
  sampler = sampling.get_pc_sampler(sde, (batch, 2), predictor, corrector, lambda x: x, snr, n_steps=1,
                                    continuous=True, denoise=True, eps=eps, device='cpu', grid=grid,
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
  positions, labels = toy_lib.moons_dataset('all')
  positions = torch.as_tensor(positions)
  return [positions[torch.as_tensor(labels) == c][::every] for c in range(len(toy_lib.CLASS_NAMES))]


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
  metrics.update(toy_lib.classwise_prdc([prdc_reference.numpy()], [samples.numpy()])[0])
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
  sampler, sde = build_sampler(name, lambda steps: toy_lib.annealed_sampler_sde(
      sigma_end, sigma_max, cfg.sigma_extra_min, steps), nfe, len(start), cfg.eps)
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
  torch.set_num_threads(args.num_threads)
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

def summarise(rows, metric, group_keys=('score', 'sigma_end', 'sampler', 'nfe')):
  """{group: (mean over seeds of the class-mean metric, std over seeds)}."""
  per_seed = {}
  for row in rows:
    key = tuple(row[k] for k in group_keys)
    per_seed.setdefault(key, {}).setdefault(row['seed'], []).append(row[metric])
  return {key: (float(np.mean([np.mean(v) for v in seeds.values()])),
                float(np.std([np.mean(v) for v in seeds.values()])))
          for key, seeds in per_seed.items()}


def print_table(rows, metrics=('sw', 'precision', 'recall')):
  stats = {metric: summarise(rows, metric) for metric in metrics}
  print(f'\n{"score":8}{"σ_end":>6} {"sampler":14}{"NFE":>6}' + ''.join(f'{m:>17}' for m in metrics))
  for key in sorted(stats[metrics[0]], key=lambda k: (k[0], -k[1], k[2] != 'exact', k[2], k[3])):
    cells = ''.join(f'{stats[m][key][0]:>10.3f} ± {stats[m][key][1]:<4.3f}' for m in metrics)
    print(f'{key[0]:8}{key[1]:>6g} {key[2]:14}{key[3]:>6}{cells}')


def verdicts(rows, budget=200, reference_nfe=2000):
  """Per (score, σ_end): the best non-PC sampler at ≤ budget NFE against PC at reference_nfe (SW, mean ± std)."""
  stats = summarise(rows, 'sw')
  lines = []
  for score, sigma_end in sorted({(k[0], k[1]) for k in stats}):
    pc = stats.get((score, sigma_end, 'pc', reference_nfe))
    candidates = [(v[0], v[1], k[2], k[3]) for k, v in stats.items()
                  if k[:2] == (score, sigma_end) and k[2] not in ('pc', 'exact') and k[3] <= budget]
    if pc is None or not candidates:
      continue
    best = min(candidates)
    verdict = 'yes' if best[0] <= pc[0] + max(pc[1], best[1]) else 'NO'
    lines.append(f'{score:8} σ_end {sigma_end:<4g}: best ≤ {budget} NFE {best[2]} at {best[3]}: SW {best[0]:.3f} ± '
                 f'{best[1]:.3f}; PC at {reference_nfe}: {pc[0]:.3f} ± {pc[1]:.3f}; as close within the spread: '
                 f'{verdict}')
  return lines


def plot(rows, path, metric='sw'):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  stats = summarise(rows, metric)
  panels = sorted({(k[0], k[1]) for k in stats}, key=lambda p: (p[0], -p[1]))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (score, sigma_end) in zip(axes[0], panels):
    for name in SAMPLERS:
      points = sorted((k[3], *v) for k, v in stats.items() if k[:3] == (score, sigma_end, name))
      if points:
        nfe, mean, std = np.array(points).T
        ax.errorbar(nfe, mean, yerr=std, marker='o', ms=3, capsize=2, label=name)
    floor = stats.get((score, sigma_end, 'exact', 0))
    if floor:
      ax.axhline(floor[0], color='grey', ls='--', lw=1, label='exact draws')
    ax.set_xscale('log'), ax.set_yscale('log')
    ax.set_xlabel('network evaluations (NFE)'), ax.set_ylabel('sliced Wasserstein to exact draws')
    ax.set_title(f'{score} score, σ_end = {sigma_end:g}', fontsize=9)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_outputs(rows, out_dir, part, extra):
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, f'sampler_nfe_{part}.json')
  with open(json_path, 'w') as f:
    json.dump(dict(extra, rows=rows), f, indent=1)
  return json_path, plot(rows, os.path.join(out_dir, f'sampler_nfe_{part}.png'))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--toy', action='store_true', help='the moons part')
  parser.add_argument('--images', action='store_true', help='the guided-image part')
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
  return parser.parse_args()


def main():
  args = parse_args()
  if not (args.toy or args.images):
    sys.exit('choose --toy and/or --images')
  if args.toy:
    begin = time.perf_counter()
    rows = toy_part(args)
    seconds = time.perf_counter() - begin
    print_table(rows)
    print('\n' + '\n'.join(verdicts(rows)))
    paths = write_outputs(rows, args.out, 'toy', dict(seconds=seconds, churn=CHURN, load=os.getloadavg()))
    print(f'\ntoy part: {seconds:.0f} s (load average {os.getloadavg()[0]:.1f}); ' + ', '.join(paths))
  if args.images:
    import bench_sampler_nfe_images
    bench_sampler_nfe_images.main(args)


if __name__ == '__main__':
  main()
