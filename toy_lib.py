"""The inter-twinning moons experiment (spec §6): data, oracle scores, D_P / D_L, samplers, class-wise PRDC,
plots and the results table. Networks live in models/toy.py; training goes through run_lib / losses.

Classes: 0 = upper crescent, 1 = lower crescent. Scores are evaluated at a fixed noise level sigma (7.5).
A "noise-level function" here is a callable fn(x, sigma) -> [B, 2]; the toy networks are such callables.
"""
import json
import math
import os

import numpy as np
import torch

import sampling
import sde_lib

CLASS_NAMES = ('upper', 'lower')
MOONS_NUM_POINTS = 10000
MOONS_SCALE = 20.
MOONS_SUBSETS = {'all': None, 'upper': 0, 'lower': 1}


# ----------------------------------------------------------------------------------------------- data

def moons_dataset(subset='all'):
  """The moons of spec §6.1: (positions float64 [N, 2], labels int64 [N]); subset 'all', 'upper' or 'lower'."""
  from sklearn.datasets import make_moons  # sklearn is only needed here
  positions, labels = make_moons(n_samples=MOONS_NUM_POINTS, noise=0.0, random_state=1)
  positions = (positions - positions.mean(axis=0)) * MOONS_SCALE
  labels = labels.astype(np.int64)
  if MOONS_SUBSETS[subset] is not None:
    keep = labels == MOONS_SUBSETS[subset]
    positions, labels = positions[keep], labels[keep]
  return positions, labels


def evaluation_grid(width=40., height=25., density=35):
  """The float32 evaluation grid [density², 2] over [-width, width] x [-height, height], x varying fastest."""
  xs = np.linspace(-width, width, density, dtype=np.float32)
  ys = np.linspace(-height, height, density, dtype=np.float32)
  return torch.from_numpy(np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2))


# --------------------------------------------------------------------------------------------- oracle

def mixture_score(x, centres, sigma, eps=1e-8, chunk=256):
  """Score of the equal-weight Gaussian mixture (std sigma) on `centres`, in float64 (spec §6.7).

  `[mean_j N_j(x) (x_j - x) / sigma²] / (mean_j N_j(x) + eps)` with the normalised 2-D densities N_j, as the
  original computes it (the eps matters only far from the data).
  """
  x = torch.as_tensor(x, dtype=torch.float64)
  centres = torch.as_tensor(centres, dtype=torch.float64)
  scores = []
  for part in x.split(chunk):
    diff = centres[None, :, :] - part[:, None, :]  # [P, M, 2]
    density = torch.exp(-(diff ** 2).sum(-1) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
    numerator = (density[..., None] * diff / sigma ** 2).mean(dim=1)
    scores.append(numerator / (density.mean(dim=1, keepdim=True) + eps))
  return torch.cat(scores)


def oracle_scores(positions, labels, x, sigma, eps=1e-8):
  """Oracle scores at x over the exact point sets (each point once, T4 fixed), float64 [P, 2] each.

  Keys as toy_oracle.pt: score_upper / score_lower / score_full and likelihood_score_<c> = score_c - score_full
  (= ∇ log p_sigma(y=c | x), the classes having equal priors).
  """
  positions, labels = torch.as_tensor(positions), torch.as_tensor(labels)
  oracle = {'score_full': mixture_score(x, positions, sigma, eps)}
  for c, name in enumerate(CLASS_NAMES):
    oracle[f'score_{name}'] = mixture_score(x, positions[labels == c], sigma, eps)
    oracle[f'likelihood_score_{name}'] = oracle[f'score_{name}'] - oracle['score_full']
  return oracle


# ---------------------------------------------------------------------------------------- estimates

def full_sigma(x, sigma):
  return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


@torch.no_grad()
def prior_score(score_fn, x, sigma):
  """score_fn(x, sigma) at one noise level for every row of x."""
  return score_fn(x, full_sigma(x, sigma))


def likelihood_score(classifier_fn, x, sigma, label, eps=0.):
  """∇_x log softmax(classifier_fn(x, sigma))[label]; eps=0 as the original metric and sampler (spec §6.8)."""
  labels = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
  return sampling.log_prob_grad(classifier_fn, x, full_sigma(x, sigma), labels, eps=eps)


def mean_distance(a, b):
  """Grid average of the Euclidean distance between two fields, in float64."""
  return (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).norm(dim=-1).mean().item()


def classifier_distances(oracle, prior, likelihoods, scale=1.0):
  """D_full, D_P_<c>, D_L_<c> of spec §6.8 for a prior score field and per-class likelihood fields."""
  metrics = {'D_full': mean_distance(oracle['score_full'], prior)}
  for name, likelihood in zip(CLASS_NAMES, likelihoods):
    metrics[f'D_P_{name}'] = mean_distance(oracle[f'score_{name}'], prior + scale * likelihood)
    metrics[f'D_L_{name}'] = mean_distance(oracle[f'likelihood_score_{name}'], scale * likelihood)
  return metrics


def posterior_sm_distances(oracle, class_scores):
  """D_P_<c> of the posterior-SM baseline: one score model per class."""
  return {f'D_P_{name}': mean_distance(oracle[f'score_{name}'], score)
          for name, score in zip(CLASS_NAMES, class_scores)}


# ------------------------------------------------------------------------------------------- samplers

def annealed_sampler_sde(sigma_end, sigma_max, sigma_extra_min, num_steps):
  """VE SDE of the noise added on top of sigma_end: the networks see sqrt(sigma_end² + sigma(t)²).

  Its reverse process anneals the networks' noise level from sigma_max down to sigma_end, so the sampler
  draws from p_{sigma_end}(x | y), the distribution the metrics and the PRDC reference set refer to.
  """
  extra_max = math.sqrt(sigma_max ** 2 - sigma_end ** 2)
  return sde_lib.VESDE(sigma_min=sigma_extra_min, sigma_max=extra_max, N=num_steps)


def sample_annealed_pc(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """Corrected annealed PC sampler (T1 fixed) = sampling.get_pc_sampler on `annealed_sampler_sde`: sigma
  decreases, reverse-diffusion predictor with step sigma_i² - sigma_{i+1}², Langevin corrector with step
  delta and noise sqrt(2 delta), guided by sampling.get_guided_score_fn."""
  cfg = config.sampling
  sigma_end = config.model.std
  sde = annealed_sampler_sde(sigma_end, config.model.sigma_max, cfg.sigma_extra_min, cfg.num_steps)

  def at_time(fn):  # noise-level function -> function of the sampler's time
    return None if fn is None else (lambda x, t: fn(x, torch.sqrt(sde.marginal_std(t) ** 2 + sigma_end ** 2)))

  sampler = sampling.get_pc_sampler(sde, (num_samples, 2), cfg.predictor, cfg.corrector, lambda x: x, cfg.snr,
                                    n_steps=cfg.n_steps_each, probability_flow=False, continuous=True,
                                    denoise=cfg.noise_removal, eps=cfg.eps, device=device, scale=scale)
  return sampler(at_time(score_fn), at_time(classifier_fn), None if classifier_fn is None else label)[0]


@torch.no_grad()
def sample_original(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """The original `vesde_pc_sampler` (spec §6.9, bug T1 kept): sigma increases from sigma_min towards
  sigma_max, the predictor step is exactly zero (omitted), x0 ~ N(0, I), and the corrector moves by
  sqrt(2 epsilon) g with noise epsilon * noise_std — not a consistent Langevin pair. The guidance uses
  log softmax without the 1e-8 (T3)."""
  cfg = config.sampling
  sigma_min, sigma_max = config.model.sigma_min, config.model.sigma_max
  labels = torch.full((num_samples,), label, dtype=torch.long, device=device)
  posterior = sampling.get_guided_score_fn(score_fn, classifier_fn, labels, scale, eps=0.)
  x = torch.randn(num_samples, 2, device=device)
  for i in range(cfg.num_steps):
    g = posterior(x, full_sigma(x, sigma_min * (sigma_max / sigma_min) ** (i / cfg.num_steps)))
    x = x + math.sqrt(2 * cfg.epsilon) * g + cfg.epsilon * cfg.noise_std * torch.randn_like(x)
  return x


SAMPLERS = {'annealed_pc': sample_annealed_pc, 'original': sample_original}


def sample_class(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """num_samples points [num_samples, 2] of class `label` from the posterior score_fn + scale ∇ log p(label | x)
  (classifier_fn None: score_fn alone) with the sampler named by config.sampling.method."""
  if config.sampling.method not in SAMPLERS:
    raise ValueError(f'config.sampling.method must be one of {sorted(SAMPLERS)}, not {config.sampling.method!r}')
  return SAMPLERS[config.sampling.method](score_fn, classifier_fn, label, scale, num_samples, config, device)


# ----------------------------------------------------------------------------------------------- PRDC

def reference_sets(positions, labels, sigma, generator):
  """Real set per class for PRDC: the class's points plus sigma·z, with the same z for both classes (§6.9)."""
  counts = [int((labels == c).sum()) for c in range(len(CLASS_NAMES))]
  z = torch.randn(max(counts), 2, generator=generator, dtype=torch.float64).numpy()
  return [positions[labels == c] + sigma * z[:counts[c]] for c in range(len(CLASS_NAMES))]


def classwise_prdc(real_sets, fake_sets, nearest_k=5):
  """Precision / recall / density / coverage per class (prdc's definitions, evaluation.compute_prdc_chunked)."""
  import evaluation  # its TensorFlow is imported lazily, never by PRDC
  return [evaluation.compute_prdc_chunked(np.asarray(real, np.float32), np.asarray(fake, np.float32), nearest_k)
          for real, fake in zip(real_sets, fake_sets)]


# ---------------------------------------------------------------------------------------------- table

TABLE_ROWS = (('base', '(a) Base (CE)'), ('scaling', '(b) Scaling (CE, λ {scale})'),
              ('posterior_sm', '(c) Posterior SM'), ('dlsm', "(d') DLSM only"), ('ours', '(d) Ours (total loss)'),
              ('ours_original_sampler', '(d) Ours, original sampler (T1)'), ('oracle', '(e) Oracle'))
# Spec §6.10, values for class c1 / c2.
PAPER_TABLE = {
    'base': {'D_P': (0.198, 0.197), 'D_L': (0.190, 0.181), 'precision': (0.94, 0.93), 'recall': (1.00, 1.00)},
    'scaling': {'D_P': (2.734, 2.627), 'D_L': (2.730, 2.618), 'precision': (0.95, 0.94), 'recall': (0.97, 0.97)},
    'posterior_sm': {'D_P': (0.063, 0.060), 'D_L': None, 'precision': (0.97, 0.97), 'recall': (1.00, 1.00)},
    'ours': {'D_P': (0.066, 0.064), 'D_L': (0.052, 0.052), 'precision': (0.96, 0.95), 'recall': (1.00, 1.00)},
    'oracle': {'D_P': (0., 0.), 'D_L': (0., 0.), 'precision': (1.00, 1.00), 'recall': (1.00, 1.00)},
}
TABLE_COLUMNS = (('D_P', 'E[D_P]', '{:.3f}'), ('D_L', 'E[D_L]', '{:.3f}'),
                 ('precision', 'Precision', '{:.2f}'), ('recall', 'Recall', '{:.2f}'))


def format_table(rows, scale=None):
  """Markdown table of spec §6.10 from {method: {'D_P': (c1, c2) | None, 'D_L': …, 'precision': …, 'recall': …}};
  methods missing from `rows` are skipped, missing values print as '-'. `scale`: the scaling baseline's λ."""
  lines = ['| method | ' + ' | '.join(f'{title} (c1 / c2)' for _, title, _ in TABLE_COLUMNS) + ' |',
           '|---' * (len(TABLE_COLUMNS) + 1) + '|']
  for key, label in TABLE_ROWS:
    if key not in rows:
      continue
    cells = []
    for column, _, fmt in TABLE_COLUMNS:
      pair = rows[key].get(column)
      cells.append('-' if pair is None else ' / '.join(fmt.format(v) for v in pair))
    label = label.format(scale='> 1' if scale is None else f'= {scale:g}')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_table(results, workdir):
  """Write results['rows'] as toy_table.md (ours, then the paper's) and all of `results` as toy_table.json."""
  scale = results.get('scaling_factor')
  markdown = '\n'.join(['## Moons, this run', '', format_table(results['rows'], scale), '',
                        '## Paper (spec §6.10)', '', format_table(PAPER_TABLE), ''])
  paths = os.path.join(workdir, 'toy_table.md'), os.path.join(workdir, 'toy_table.json')
  with open(paths[0], 'w') as f:
    f.write(markdown)
  with open(paths[1], 'w') as f:
    json.dump(results, f, indent=2)
  return paths


# ---------------------------------------------------------------------------------------------- plots

def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_score_fields(grid, fields, path):
  """Quiver plots of score fields: fields = {title: (field_upper, field_lower)}, one column per title."""
  plt = _pyplot()
  grid = np.asarray(grid, np.float64)
  fig, axes = plt.subplots(2, len(fields), figsize=(4 * len(fields), 5.6), squeeze=False)
  for col, (title, per_class) in enumerate(fields.items()):
    for row, field in enumerate(per_class):
      field = np.asarray(torch.as_tensor(field, dtype=torch.float64))
      ax = axes[row, col]
      ax.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], color='C0' if row == 0 else 'C3')
      mean_norm = np.linalg.norm(field, axis=1).mean()  # arrows are scaled per panel
      ax.set_title(f'{title}: {CLASS_NAMES[row]} (mean |s| {mean_norm:.2f})', fontsize=9)
      ax.set_aspect('equal')
      ax.set_xticks([]), ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_samples(samples, path, limits=(45., 30.)):
  """Scatter plots: samples = {title: (points_upper, points_lower)}, one panel per title."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 3.2), squeeze=False)
  for ax, (title, per_class) in zip(axes[0], samples.items()):
    for c, points in enumerate(per_class):
      points = np.asarray(torch.as_tensor(points, dtype=torch.float64))
      ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.3, color='C0' if c == 0 else 'C3',
                 label=CLASS_NAMES[c])
    ax.set_xlim(-limits[0], limits[0]), ax.set_ylim(-limits[1], limits[1])
    ax.set_title(title, fontsize=9)
    ax.set_aspect('equal')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
