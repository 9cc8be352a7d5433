"""Sample quality against network evaluations (NFE) of the guided samplers: PC and the σ-space solvers.

  python benchmarks/bench_sampler_nfe.py --toy        # the moons against their exact target (≤ 10 min on 2 cores)
  python benchmarks/bench_sampler_nfe.py --digits     # the networks of `make digits` against the real digits
  python benchmarks/bench_sampler_nfe.py --toy_from A.json B.json   # report earlier rows again (no sampling)

Toy: for each class, the sliced-Wasserstein distance (and class-wise PRDC) between 1 000 samples and 1 000 exact
draws of the target p_σ(x|y), (a) with the exact posterior score of the target (a Gaussian mixture: this isolates the
sampler's own error) and (b) with the trained score network + total-loss (DLSM) classifier of `make demo`, at the
toy's σ_end = 7.5 and at σ_end = 1.0. Every sampler starts from exact draws of p_σmax(x|y) at σ_max = 10: the prior
N(0, σ_max²) is not that marginal (the moons span about ±20), which a deterministic sampler cannot hide.
The oracle's target is the mixture on every 50th point of a class (100 per class, 0.63 apart on the arc): at σ ≥ 1 it
is the same crescent as the full set, and its exact score costs 50× less.

Digits: the score model and the total-loss classifier (--digits_classifier) of a `make digits` run sample
--digits_samples digits (balanced over the 10 classes) at guidance scale --digits_scale from the VE prior. Each run
is measured in the feature space of the run's reference classifier: `recognised`, its class-wise averaged accuracy
on the samples (how often it sees the asked-for digit), `fd`, the Fréchet distance between the samples' features and
those of the real training split (1 438 digits, datasets.load_split(config, 'train')), and `cw_fd`, the class-wise
averaged FD (a tenth of the samples against each class's ~144 training digits: large and noisy); and in pixel space
how far a class's samples spread about their class mean, `coarse_spread` of the 2×2-block means (the digit's shape)
and `fine_spread` of what they leave (its strokes): a sampler that under-disperses shows it here before in FD. `exact`
rows are real test digits (the same number per class, drawn per seed) measured the same way: the floor at this
sample size.

A sampler is named by a spec, 'method' or 'method:key=value:…' (--samplers): the method of config.sampling.method,
each key an option of config.sampling.<method> or a field of config.sampling (grid, rho, noise_removal,
guided_sigma_min, guided_sigma_max, …), e.g. 'dpmpp_2m:eta=10:grid=logsnr'. The grid is linear for PC and rho for the
σ-space solvers unless the spec names one; the other fields are those of the part's config (toy: the CIFAR defaults of
configs/default_cifar_configs.py, digits: configs/digits/eval.py). Every run is built by sampling.get_sampling_fn
with the most grid points whose NFE, as the built sampler reports it, fits the run's budget, and records the NFE
counted while sampling.

Runs are independent jobs, each seeded by its own seed: --workers processes (one torch thread each) share them,
the largest NFE first, and the rows come back in the jobs' order, the same as with --workers 1.
Writes <out>/sampler_nfe_<part>.json — rows {sampler, grid, nfe, seed, class, ..., metric: value} — and a plot of
the metric against NFE beside it, and prints the table.
"""
import argparse
import copy
import itertools
import json
import math
import multiprocessing
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import evaluation  # noqa: E402
import fileio  # noqa: E402
import mixture  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
import tables  # noqa: E402
import time_grids  # noqa: E402
import toy  # noqa: E402
from models import checkpoint as ckpt  # noqa: E402
from toy import data as toy_data  # noqa: E402
from toy import metrics as toy_metrics  # noqa: E402
from toy import samplers as toy_samplers  # noqa: E402

TOY_SAMPLERS = ('pc', 'heun', 'heun:s_churn=10', 'dpmpp_2m:eta=0', 'dpmpp_2m:eta=1', 'dpmpp_3m_sde', 'unipc')
DIGITS_SAMPLERS = ('pc', 'heun', 'heun:s_churn=50', 'dpmpp_2m:eta=0', 'dpmpp_2m:eta=10', 'dpmpp_3m_sde:eta=1',
                   'dpmpp_3m_sde:eta=10', 'unipc')
PC_NFES = (10, 20, 50, 100, 200, 500, 1000, 2000)
GRID_NFES = (5, 10, 20, 50, 100, 200, 500)
DIGITS_PC_NFES = (20, 50, 100, 200, 500, 2000)
DIGITS_NFES = (5, 10, 15, 20, 30, 50, 100)


def method_of(spec):
  return spec.split(':')[0]


def sampler_config(base, spec, num_steps):
  """A copy of the config `base` sampling with the sampler `spec` on num_steps grid points (see the module doc)."""
  config = copy.deepcopy(base)
  s, method = config.sampling, method_of(spec)
  s.method, s.num_steps, s.grid = method, num_steps, 'linear' if method == 'pc' else 'rho'
  for setting in spec.split(':')[1:]:
    key, _, value = setting.partition('=')
    section = s[method] if key in s.get(method, {}) else s
    if key not in section:
      raise ValueError(f'sampler {spec!r}: {key!r} is neither an option of config.sampling.{method} nor a field of '
                       'config.sampling')
    section[key] = value in ('True', 'true', '1') if isinstance(section[key], bool) else type(section[key])(value)
  return config


def budget_steps(planned_nfe, budget):
  """The most grid points (at least 2) whose sampler makes at most `budget` network evaluations, planned_nfe(steps)
  growing with the steps (bisection)."""
  low, high = 2, budget + 1
  if planned_nfe(high) <= budget:
    return high
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if planned_nfe(middle) <= budget else (low, middle)
  return low


_BUDGET_STEPS = {}  # (spec, budget, base sampling section) -> grid points; the NFE does not depend on the values


def build_for_budget(base, spec, budget, sde, eps, shape):
  """(sampler, its config) of `spec` with the most grid points that fit `budget` NFE, through
  sampling.get_sampling_fn on `sde`."""
  def build(steps):
    config = sampler_config(base, spec, steps)
    return sampling.get_sampling_fn(config, sde, shape, lambda x: x, eps), config
  key = (spec, budget, str(base.sampling))
  if key not in _BUDGET_STEPS:
    _BUDGET_STEPS[key] = budget_steps(lambda steps: build(steps)[0].nfe, budget)
  return build(_BUDGET_STEPS[key])


# ---------------------------------------------------------------------------------------------- toy target

class ToyTarget:
  """The class-conditional targets of one toy setting: centres per class, the posterior score, exact draws (the
  mixture of N(c, σ²I) over a class's centres, mixture.py), float32."""

  def __init__(self, centres_per_class, num_samples):
    self.centres = centres_per_class
    self.num_samples = num_samples
    self.labels = torch.arange(len(centres_per_class)).repeat_interleave(num_samples)

  def draws(self, sigma, generator):
    return [torch.from_numpy(mixture.exact_draws(c, sigma, self.num_samples, generator)).float()
            for c in self.centres]

  def score(self, x, sigma):
    n = self.num_samples
    return torch.cat([mixture.mixture_score(x[k * n:(k + 1) * n], c, sigma[k * n:(k + 1) * n]).float()
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


def toy_run(job, state):
  """One sampler run of a job for both classes of its panel: (samples per class, its config, NFE, seconds)."""
  setting, sigma_end, seed = job['setting'], job['sigma_end'], job['seed']
  target, demo = state['targets'][setting], state['config']
  generator = torch.Generator().manual_seed(seed)
  start = torch.cat(target.draws(demo.model.sigma_max, generator))
  sde = toy_samplers.annealed_sampler_sde(sigma_end, demo.model.sigma_max, demo.sampling.sigma_extra_min, 1000)
  score_fn, classifier_fn = score_functions(setting, sde, sigma_end, target, state['networks'])
  base = copy.deepcopy(state['base'])
  base.sampling.conditional = classifier_fn is not None
  sampler, config = build_for_budget(base, job['sampler'], job['nfe'], sde, demo.sampling.eps, start.shape)
  torch.manual_seed(seed)
  begin = time.perf_counter()
  x, nfe = sampler(score_fn, classifier_fn, target.labels, z=start)
  return x.split(target.num_samples), config, nfe, time.perf_counter() - begin


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


def toy_job(job, state):
  """The rows of one toy sampler run (both classes)."""
  samples, config, nfe, seconds = toy_run(job, state)
  references = state['references'][job['setting'], job['sigma_end']]
  rows = []
  for c, points in enumerate(samples):
    row = dict(sampler=job['sampler'], grid=config.sampling.grid, nfe=nfe, seed=job['seed'], **{'class': c},
               sigma_end=job['sigma_end'], score=job['setting'], seconds=seconds)
    row.update(class_metrics(points, *references[c]))
    rows.append(row)
  return rows


def toy_line(job, rows):
  sw = np.mean([row['sw'] for row in rows])
  return (f'{job["setting"]:8} σ_end {job["sigma_end"]:<4g} {job["sampler"]:14} NFE {rows[0]["nfe"]:5} '
          f'seed {job["seed"]}: SW {sw:.3f}')


def panel_references(target, sigma_end):
  """Per class two independent exact sets at σ_end (the SW reference, the PRDC reference), from a fixed seed."""
  generator = torch.Generator().manual_seed(123)
  return list(zip(target.draws(sigma_end, generator), target.draws(sigma_end, generator)))


def toy_base():
  """The CIFAR defaults (configs/default_cifar_configs.py) with guided PC at scale 1 on the CPU: the base config of
  the toy's samplers (their networks are functions of the sampler's time)."""
  from configs.default_cifar_configs import get_default_configs, set_pc_sampler
  config = get_default_configs()
  set_pc_sampler(config.sampling)
  config.device = 'cpu'
  return config


def toy_part(args):
  """The exact-draw floor rows, then one job per (setting, σ_end, sampler, NFE, seed)."""
  from configs.toy.demo import get_config
  networks = trained_networks(args.toy_networks) if 'trained' in args.settings else None
  targets = {'oracle': ToyTarget(class_centres(every=50), args.toy_samples),
             'trained': ToyTarget(class_centres(), args.toy_samples)}
  panels = list(itertools.product(args.settings, args.sigma_ends))
  references = {(setting, sigma_end): panel_references(targets[setting], sigma_end) for setting, sigma_end in panels}
  rows = [row for setting, sigma_end in panels
          for row in floor_rows(args.seeds, setting, sigma_end, targets[setting], references[setting, sigma_end])]
  jobs = [dict(setting=setting, sigma_end=sigma_end, sampler=name, nfe=nfe, seed=seed)
          for setting, sigma_end in panels for name in args.samplers or TOY_SAMPLERS
          for nfe in (PC_NFES if method_of(name) == 'pc' else args.grid_nfes) for seed in args.seeds]
  state = dict(targets=targets, networks=networks, config=get_config(), references=references, base=toy_base())
  return rows + run_jobs(jobs, toy_job, state, args.workers, toy_line)


# ---------------------------------------------------------------------------------------------- jobs

_STATE = {}  # a pool worker's copy of the part's state and job function


def _enter_worker(job_fn, state):
  torch.set_num_threads(1)
  _STATE.update(state, job_fn=job_fn)


def _run_indexed(indexed):
  index, job = indexed
  return index, _STATE['job_fn'](job, _STATE)


def run_jobs(jobs, job_fn, state, workers, line_of):
  """job_fn(job, state) -> rows, for every job; the rows of all jobs in the jobs' order.

  workers ≤ 1: in this process; else in a pool of `workers` processes on one torch thread each. The largest NFE
  goes first (the pool's last jobs are then short). Each job prints line_of(job, rows) and the elapsed seconds as
  it ends.
  """
  order = sorted(range(len(jobs)), key=lambda index: -jobs[index]['nfe'])
  indexed = [(index, jobs[index]) for index in order]
  if workers <= 1:
    return collect(jobs, ((index, job_fn(job, state)) for index, job in indexed), line_of)
  with multiprocessing.Pool(workers, _enter_worker, (job_fn, state)) as pool:
    return collect(jobs, pool.imap_unordered(_run_indexed, indexed), line_of)


def collect(jobs, finished, line_of):
  """The rows of the (job index, rows) pairs in `finished`, printed as they come, returned in the jobs' order."""
  results, begin = [None] * len(jobs), time.perf_counter()
  for index, rows in finished:
    results[index] = rows
    print(f'  {line_of(jobs[index], rows)} ({time.perf_counter() - begin:.0f} s)', flush=True)
  return [row for rows in results for row in rows]


# ---------------------------------------------------------------------------------------------- digits

DIGITS_RUNS = {'score model': 'score', 'classifier': '{seed_dir}/classifier_{loss}'}  # under --digits_root


def digits_files(root, seed_dir, loss='total'):
  """{what: path} of a digits run: the newest intact checkpoint of each training run and the reference classifier;
  exits with one line naming the first that is missing."""
  paths = {}
  for what, run in DIGITS_RUNS.items():
    folder = os.path.join(root, run.format(seed_dir=seed_dir, loss=loss), 'checkpoints')
    paths[what] = ckpt.latest_checkpoint(folder) or missing(what, os.path.join(folder, 'checkpoint_<step>.pth'))
  reference = os.path.join(root, 'reference_classifier.pth')
  paths['reference classifier'] = reference if os.path.isfile(reference) else missing('reference classifier',
                                                                                      reference)
  return paths


def missing(what, path):
  sys.exit(f'{os.path.basename(sys.argv[0])}: error: no {what} at {path}: run make digits first')


def digits_config(paths, device, scale):
  """configs/digits/eval.py with the run's checkpoints and reference classifier, guiding at `scale`."""
  from configs.digits import eval as digits_eval
  config = digits_eval.get_config()
  config.sampling.scaling_factor = scale
  config.model.score_restore_path = paths['score model']
  config.model.classifier_restore_path = paths['classifier']
  config.eval.reference_classifier = paths['reference classifier']
  config.device = device
  return config


def digits_state(args, paths):
  """Everything a digits job reads: networks, SDE, labels, the reference classifier and the real features."""
  config = digits_config(paths, args.device, args.digits_scale)
  networks = ckpt.load_guidance_models(config, paths['score model'], paths['classifier'], torch.device(args.device),
                                        channels_last=True)
  reference = evaluation.ReferenceFeatures(config)
  real_images, real_labels = datasets.load_split(config, 'train')
  test_images, test_labels = datasets.load_split(config, 'test')
  sde, eps = sde_lib.get_sde(config)
  return dict(config=config, networks=networks, sde=sde, eps=eps, scale=args.digits_scale, reference=reference,
              labels=np.arange(args.digits_samples) % config.classifier.classes,
              real=class_features(reference, real_images, real_labels, config.classifier.classes),
              test=(test_images, test_labels))


def class_features(reference, images, labels, num_classes):
  """(features of all images, [features of class c]) in the reference classifier's space."""
  features = evaluation.get_inception_features(images, reference, batch_size=500)[0]
  return features, [features[labels == c] for c in range(num_classes)]


def class_spread(images, labels, num_classes):
  """(coarse, fine): per class the mean squared distance of the images to their class mean, averaged over classes,
  of the 2×2-block means (the digit's shape) and of what the block means leave (its strokes), in [0, 1] pixel
  units; uint8 NHWC images with even sides."""
  x = images.astype(np.float64) / 255.
  n, height, width, channels = x.shape
  blocks = x.reshape(n, height // 2, 2, width // 2, 2, channels).mean((2, 4), keepdims=True)
  coarse = np.broadcast_to(blocks, (n, height // 2, 2, width // 2, 2, channels)).reshape(x.shape)
  spreads = []
  for part in (coarse, x - coarse):
    per_class = [part[labels == c] for c in range(num_classes)]
    spreads.append(np.mean([((p - p.mean(0)) ** 2).sum((1, 2, 3)).mean() for p in per_class]))
  return tuple(spreads)


def digits_metrics(images, labels, state):
  """{'recognised', 'fd', 'cw_fd', 'coarse_spread', 'fine_spread'} of uint8 NHWC images asked to show `labels`."""
  features, logits = evaluation.get_inception_features(images, state['reference'], batch_size=500)
  real_all, real_per_class = state['real']
  classes = range(len(real_per_class))
  recognised = [np.mean(logits[labels == c].argmax(1) == c) for c in classes]
  class_fd = [evaluation.frechet_distance(real_per_class[c], features[labels == c]) for c in classes]
  coarse, fine = class_spread(images, labels, len(real_per_class))
  return dict(recognised=evaluation.classwise_average(recognised),
              fd=evaluation.frechet_distance(real_all, features), cw_fd=evaluation.classwise_average(class_fd),
              coarse_spread=coarse, fine_spread=fine)


def digits_samples(job, state):
  """(uint8 NHWC samples, the sampler's config, NFE, seconds) of one guided run on the digits networks."""
  config = state['config']
  shape = (len(state['labels']), config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler, sampler_config = build_for_budget(config, job['sampler'], job['nfe'], state['sde'], state['eps'], shape)
  labels = torch.as_tensor(state['labels'], device=config.device)
  torch.manual_seed(job['seed'])
  begin = time.perf_counter()
  x, nfe = sampler(*state['networks'], labels)
  seconds = time.perf_counter() - begin
  return fileio.to_uint8(datasets.get_data_inverse_scaler(config)(x)), sampler_config, nfe, seconds


def digits_job(job, state):
  images, config, nfe, seconds = digits_samples(job, state)
  row = dict(sampler=job['sampler'], grid=config.sampling.grid, nfe=nfe, seed=job['seed'], **{'class': 'all'},
             scale=state['scale'], samples=len(images), seconds=seconds)
  row.update(digits_metrics(images, state['labels'], state))
  return [row]


def digits_floor_rows(seeds, state):
  """Real test digits, as many per class as the samples have, drawn per seed and measured like samples."""
  images, labels = state['test']
  per_class = np.bincount(state['labels'])
  rows = []
  for seed in seeds:
    rng = np.random.default_rng(10_000 + seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(per_class)])
    row = dict(sampler='exact', grid='-', nfe=0, seed=seed, **{'class': 'all'}, scale=state['scale'],
               samples=len(chosen))
    row.update(digits_metrics(images[chosen], labels[chosen], state))
    rows.append(row)
  return rows


def digits_line(job, rows):
  row = rows[0]
  return (f'digits {job["sampler"]:14} NFE {row["nfe"]:5} seed {job["seed"]}: recognised {row["recognised"]:.3f}, '
          f'FD {row["fd"]:.2f}, CW FD {row["cw_fd"]:.1f}, sampling {row["seconds"]:.1f} s')


def digits_workers(args):
  """--workers on the CPU; one process where it owns an accelerator."""
  return args.workers if args.device == 'cpu' else 1


def digits_part(args, paths):
  """(the real-digit floor rows then one row per (sampler, NFE, seed) job, the jobs' state)."""
  state = digits_state(args, paths)
  jobs = [dict(sampler=name, nfe=nfe, seed=seed) for name in args.samplers or DIGITS_SAMPLERS
          for nfe in (args.digits_pc_nfes if method_of(name) == 'pc' else args.digits_nfes) for seed in args.seeds]
  rows = run_jobs(jobs, digits_job, state, digits_workers(args), digits_line)
  return digits_floor_rows(args.seeds, state) + rows, state


def noise_share_rows(state, steps, eta, seed=0):
  """Along a first-order SDE-DPM-Solver++ run (η, `steps` steps on the ρ grid, guided): per step σ → σ', how much
  D changes, E‖D(x̂', σ') − D(x̂, σ)‖², and the part of it that answers the noise drawn in the step, half the mean
  squared difference of D(x̂', σ') between two independent draws of that noise. The second-order correction
  (D − D_prev)·h / (2·h_prev) extrapolates this difference."""
  config, sde = state['config'], state['sde']
  labels = torch.as_tensor(state['labels'], device=config.device)
  denoiser = sampling.build_denoiser(sde, *state['networks'], labels, sampling.Guidance(state['scale']),
                                     sampling.network_settings(config))
  sigmas = time_grids.sigma_grid('rho', sde, steps, state['eps'], config.sampling.rho, to_zero=False).tolist()
  torch.manual_seed(seed)
  x = sde.prior_sampling((len(labels), config.data.num_channels, config.data.image_size,
                          config.data.image_size)).to(config.device)  # VE: x̂ = x
  rows = []
  with torch.no_grad():
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
      denoised, h = denoiser(x, sigma), math.log(sigma / sigma_next)
      decay = math.exp(-(1 + eta) * h)
      mean = decay * x + (1 - decay) * denoised
      draws = [mean + sampling._sde_noise(x, sigma_next, h, eta, 1.) for _ in range(2)]
      after = [denoiser(draw, sigma_next) for draw in draws]
      change = ((after[0] - denoised) ** 2).flatten(1).sum(1).mean().item()
      noise = 0.5 * ((after[0] - after[1]) ** 2).flatten(1).sum(1).mean().item()
      rows.append(dict(sigma=sigma, sigma_next=sigma_next, change=change, noise_part=noise, share=noise / change))
      x = draws[0]
  return rows


def report_noise_share(args, paths):
  state = digits_state(args, paths)
  eta = state['config'].sampling.dpmpp_2m.eta
  rows = noise_share_rows(state, args.digits_noise_share, eta)
  print(f'\nη = {eta:g}, {args.digits_noise_share} steps: σ → σ\', E‖D\' − D‖², the part from the fresh noise, share')
  for row in rows:
    print(f'  {row["sigma"]:6.3f} → {row["sigma_next"]:6.3f}  {row["change"]:8.3f}  {row["noise_part"]:8.3f}  '
          f'{row["share"]:.2f}')
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'noise_share_digits.json')
  with open(path, 'w') as f:
    json.dump(dict(eta=eta, steps=args.digits_noise_share, samples=args.digits_samples, rows=rows), f, indent=1)
  print(f'written: {path}')


# ---------------------------------------------------------------------------------------------- report

TOY_GROUPS = ('score', 'sigma_end', 'sampler', 'nfe')
DIGITS_GROUPS = ('scale', 'sampler', 'nfe')
DIGITS_METRICS = ('recognised', 'fd', 'cw_fd', 'coarse_spread', 'fine_spread')


def group_statistics(rows, metric, group_keys):
  """{group: (mean over seeds of the class-mean metric, std over seeds)}; groups end with (sampler, nfe)."""
  per_seed = {}
  for row in rows:
    key = tuple(row[k] for k in group_keys)
    per_seed.setdefault(key, {}).setdefault(row['seed'], []).append(row[metric])
  return {key: tables.mean_and_std([np.mean(v) for v in seeds.values()]) for key, seeds in per_seed.items()}


def print_table(rows, metrics, group_keys):
  stats = {metric: group_statistics(rows, metric, group_keys) for metric in metrics}
  keys = sorted(stats[metrics[0]], key=lambda k: (k[:-2], k[-2] != 'exact', k[-2], k[-1]))
  width = max([18] + [len(str(v)) + 2 for key in keys for v in key])
  print('\n' + ''.join(f'{k:>{width}}' for k in group_keys) + ''.join(f'{m:>19}' for m in metrics))
  for key in keys:
    cells = ''.join(f'{stats[m][key][0]:>11.3f} ± {stats[m][key][1]:<5.3f}' for m in metrics)
    print(''.join(f'{v:>{width}}' for v in key) + cells)


def nfe_table(rows, metrics, group_keys, decimals=2):
  """A Markdown table of the metrics (mean ± std over seeds): one row per (sampler, NFE), one column per panel and
  metric (headed by the panel with one metric, by the metric with one panel)."""
  stats = {metric: group_statistics(rows, metric, group_keys) for metric in metrics}
  panels = sorted({k[:-2] for k in stats[metrics[0]]})
  columns = [(p, m) for p in panels for m in metrics]
  heads = [', '.join(map(str, p)) if len(metrics) == 1 else m if len(panels) == 1 else f'{", ".join(map(str, p))} {m}'
           for p, m in columns]
  table = []
  for name, nfe in sorted({k[-2:] for k in stats[metrics[0]]}, key=lambda k: (k[0] != 'exact', k[0] != 'pc', *k)):
    cells = [stats[m].get(p + (name, nfe)) for p, m in columns]
    table.append([name, str(nfe)] + ['' if c is None else f'{c[0]:.{decimals}f} ± {c[1]:.{decimals}f}' for c in cells])
  return tables.markdown_table(['sampler', 'NFE'] + heads, table)


def contenders(keys, panel, budget):
  """The (panel…, sampler, NFE) keys of the panel's non-PC samplers at ≤ budget NFE, sorted."""
  return [k for k in sorted(keys) if k[:-2] == panel and k[-2] not in ('pc', 'exact') and k[-1] <= budget]


def as_good(candidate, reference, sign):
  """(mean, std) `candidate` as good as `reference` within the larger seed spread; sign −1: higher is better."""
  return sign * candidate[0] <= sign * reference[0] + max(candidate[1], reference[1])


def verdicts(rows, metric, group_keys, higher_is_better=False, budget=200, reference_nfe=2000):
  """Per panel: the best non-PC sampler at ≤ budget NFE against PC at reference_nfe (mean ± std over seeds)."""
  stats, sign = group_statistics(rows, metric, group_keys), (-1 if higher_is_better else 1)
  lines = []
  for panel in sorted({k[:-2] for k in stats}):
    pc = stats.get(panel + ('pc', reference_nfe))
    candidates = [(sign * stats[k][0], stats[k][1], k[-2], k[-1]) for k in contenders(stats, panel, budget)]
    if pc is None or not candidates:
      continue
    best = min(candidates)
    verdict = 'yes' if as_good((sign * best[0], best[1]), pc, sign) else 'NO'
    lines.append(f'{panel}: best at ≤ {budget} NFE {best[2]} ({best[3]} NFE) {metric} {sign * best[0]:.3f} ± '
                 f'{best[1]:.3f}; PC at {reference_nfe}: {pc[0]:.3f} ± {pc[1]:.3f}; '
                 f'as good within the spread: {verdict}')
  return lines


def joint_verdicts(rows, higher_is_better, group_keys, budget=200, reference_nfe=2000):
  """Per panel: the non-PC (sampler, NFE ≤ budget) as good as PC at reference_nfe on every metric at once;
  higher_is_better maps each metric to its direction."""
  stats = {metric: group_statistics(rows, metric, group_keys) for metric in higher_is_better}
  first = stats[next(iter(higher_is_better))]
  lines = []
  for panel in sorted({k[:-2] for k in first}):
    if panel + ('pc', reference_nfe) not in first:
      continue
    passing = [f'{k[-2]} ({k[-1]} NFE)' for k in contenders(first, panel, budget)
               if all(as_good(stats[m][k], stats[m][panel + ('pc', reference_nfe)], -1 if up else 1)
                      for m, up in higher_is_better.items())]
    lines.append(f'{panel}: as good as PC at {reference_nfe} on {" and ".join(higher_is_better)} at ≤ {budget} NFE: '
                 + (', '.join(passing) or 'none'))
  return lines


def plot(rows, path, group_keys, curves, floor_label='exact draws'):
  """One panel per (group panel, curve); curves are (metric, y label, log y). NFE on a log axis, one line per
  sampler (the same colour in every panel), the `exact` rows as a dashed floor."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  stats = {metric: group_statistics(rows, metric, group_keys) for metric, _, _ in curves}
  panels = [(p, curve) for p in sorted({k[:-2] for k in stats[curves[0][0]]}) for curve in curves]
  names = sorted({k[-2] for k in stats[curves[0][0]]} - {'exact'})
  colours = {name: f'C{index % 10}' for index, name in enumerate(names)}
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (panel, (metric, ylabel, log_y)) in zip(axes[0], panels):
    plot_panel(ax, stats[metric], panel, floor_label, colours)
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


def plot_panel(ax, stats, panel, floor_label, colours):
  for name in sorted({k[-2] for k in stats if k[:-2] == panel} - {'exact'}):
    points = sorted((k[-1], *v) for k, v in stats.items() if k[:-2] + (k[-2],) == panel + (name,))
    nfe, mean, std = np.array(points).T
    ax.errorbar(nfe, mean, yerr=std, marker='o', ms=3, capsize=2, label=name, color=colours[name])
  floor = stats.get(panel + ('exact', 0))
  if floor:
    ax.axhline(floor[0], color='grey', ls='--', lw=1, label=floor_label)


def write_json(rows, out_dir, part, extra):
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'sampler_nfe_{part}.json')
  with open(path, 'w') as f:
    json.dump(dict(extra, rows=rows), f, indent=1)
  return path


def print_toy(rows, out, extra, budget=None):
  """Table, verdicts (the best at ≤ budget NFE, default 200), JSON and plot of toy rows."""
  print_table(rows, ('sw', 'precision', 'recall'), TOY_GROUPS)
  print('\n' + '\n'.join(verdicts(rows, 'sw', TOY_GROUPS, budget=budget or 200)))
  print('\n' + nfe_table(rows, ('sw',), TOY_GROUPS))
  paths = [write_json(rows, out, 'toy', extra),
           plot(rows, os.path.join(out, 'sampler_nfe_toy.png'), TOY_GROUPS,
                [('sw', 'sliced Wasserstein to exact draws', True)])]
  print('written: ' + ', '.join(paths))


def print_digits(rows, out, extra, budget=None):
  """Table, verdicts (the best at ≤ budget NFE, default 20), JSON and plot of digits rows."""
  budget = budget or 20
  metrics = [m for m in DIGITS_METRICS if all(m in row for row in rows)]
  print_table(rows, metrics, DIGITS_GROUPS)
  print('\n' + '\n'.join(verdicts(rows, 'recognised', DIGITS_GROUPS, higher_is_better=True, budget=budget)
                          + verdicts(rows, 'fd', DIGITS_GROUPS, budget=budget)
                          + joint_verdicts(rows, dict(recognised=True, fd=False), DIGITS_GROUPS, budget=budget)))
  print('\n' + nfe_table(rows, metrics, DIGITS_GROUPS, decimals=3))
  paths = [write_json(rows, out, 'digits', extra),
           plot(rows, os.path.join(out, 'sampler_nfe_digits.png'), DIGITS_GROUPS,
                [('recognised', 'recognised (class-wise)', False), ('fd', 'FD to the real training digits', True)],
                floor_label='real test digits')]
  print('written: ' + ', '.join(paths))


def timed(part):
  """(rows and anything else part() returns, {'seconds', 'cpu_seconds', 'load'}); CPU time of this process only."""
  begin, cpu = time.perf_counter(), time.process_time()
  result = part()
  return result, dict(seconds=time.perf_counter() - begin, cpu_seconds=time.process_time() - cpu,
                      load=os.getloadavg())


def report_toy(args):
  rows, timing = timed(lambda: toy_part(args))
  print_toy(rows, args.out, dict(timing, workers=args.workers, samplers=args.samplers or list(TOY_SAMPLERS),
                                 sampling=toy_base().sampling.to_dict()), args.budget)
  print(f'\ntoy part: {timing["seconds"]:.0f} s wall with {args.workers} worker(s) (load average '
        f'{os.getloadavg()[0]:.1f})')


def report_digits(args, paths):
  (rows, state), timing = timed(lambda: digits_part(args, paths))
  files = {what: dict(path=path, fingerprint=ckpt.checkpoint_fingerprint(path)) for what, path in paths.items()}
  workers = digits_workers(args)
  print_digits(rows, args.out, dict(timing, workers=workers, samplers=args.samplers or list(DIGITS_SAMPLERS),
                                    sampling=state['config'].sampling.to_dict(), files=files, real_split='train',
                                    classifier=args.digits_classifier,
                                    reference_test_accuracy=state['reference'].test_accuracy, device=args.device),
               args.budget)
  print(f'\ndigits part: {timing["seconds"]:.0f} s wall with {workers} worker(s) (load average '
        f'{os.getloadavg()[0]:.1f})')


def report_files(paths, out, print_part, budget=None):
  """The report of rows from earlier runs' JSON files (e.g. parts run as separate processes)."""
  rows, parts = [], []
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    rows += part.pop('rows')
    parts.append(dict(part, file=path))
  print_part(rows, out, dict(parts=parts), budget)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--toy', action='store_true',
                      help='the moons part (also run when neither --toy nor --digits is given)')
  parser.add_argument('--digits', action='store_true', help='the digits part (needs the checkpoints of make digits)')
  parser.add_argument('--toy_from', nargs='+', help='toy: report the rows of these JSON files (no sampling)')
  parser.add_argument('--digits_from', nargs='+', help='digits: report the rows of these JSON files (no sampling)')
  parser.add_argument('--out', default='results/bench_sampler_nfe', help='folder of the JSON files and plots')
  parser.add_argument('--workers', type=int, default=2, help='processes sharing the runs (1: this process)')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--samplers', nargs='+', help=f'sampler specs (see above); default for the toy: '
                      f'{" ".join(TOY_SAMPLERS)}; for digits: {" ".join(DIGITS_SAMPLERS)}')
  parser.add_argument('--budget', type=int, help='verdicts: the NFE budget of the samplers compared with PC at 2000 '
                      '(default: toy 200, digits 20)')
  parser.add_argument('--num_threads', type=int, default=1, help='torch CPU threads of this process (workers: 1)')
  parser.add_argument('--toy_networks', default='results/bench_sampler_nfe/toy_networks',
                      help='run_lib_toy workdir with the demo score and total-loss stages (trained if missing; '
                           'the toy_demo of `make demo` works)')
  parser.add_argument('--grid_nfes', type=int, nargs='+', default=list(GRID_NFES), help='toy: non-PC NFEs')
  parser.add_argument('--settings', nargs='+', default=['oracle', 'trained'], choices=['oracle', 'trained'])
  parser.add_argument('--sigma_ends', type=float, nargs='+', default=[7.5, 1.0])
  parser.add_argument('--toy_samples', type=int, default=1000, help='samples per class and run')
  parser.add_argument('--digits_root', default='results/digits', help='digits: the run folder of make digits')
  parser.add_argument('--digits_seed_dir', default='seed0', help='digits: the seed folder of the classifier')
  parser.add_argument('--digits_classifier', default='total', choices=tables.method_losses(),
                      help='digits: the loss of the guiding classifier (classifier_<loss> of the seed folder)')
  parser.add_argument('--digits_samples', type=int, default=250, help='digits: samples per run (class = index mod 10)')
  parser.add_argument('--digits_scale', type=float, default=1., help='digits: guidance scale λ')
  parser.add_argument('--digits_pc_nfes', type=int, nargs='+', default=list(DIGITS_PC_NFES), help='digits: PC NFEs')
  parser.add_argument('--digits_nfes', type=int, nargs='+', default=list(DIGITS_NFES), help='digits: non-PC NFEs')
  parser.add_argument('--device', default='cpu', help='digits: torch device (not cpu: one worker)')
  parser.add_argument('--digits_noise_share', type=int, metavar='STEPS',
                      help='digits: instead of the runs, how much of the change of D per step answers the fresh noise, '
                           'along a first-order run of STEPS steps with the η of configs/digits/eval.py')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.toy_from or args.digits_from:
    for paths, print_part in ((args.toy_from, print_toy), (args.digits_from, print_digits)):
      if paths:
        report_files(paths, args.out, print_part, args.budget)
    return
  if not (args.toy or args.digits):
    args.toy = True  # the part that needs no other run (`make bench` runs every benchmark without arguments)
  digits_paths = digits_files(args.digits_root, args.digits_seed_dir, args.digits_classifier) if args.digits else None
  torch.set_num_threads(args.num_threads)
  if args.toy:
    report_toy(args)
  if args.digits:
    (report_noise_share if args.digits_noise_share else report_digits)(args, digits_paths)


if __name__ == '__main__':
  main()
