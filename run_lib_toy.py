"""The moons experiment end to end, the quick-start `make demo`:

  python run_lib_toy.py --config configs/toy/demo.py --workdir toy_demo     (CPU, minutes)
  python run_lib_toy.py --config configs/toy/paper.py --workdir toy_paper   (the paper's settings, hours on CPU)

Trains the six stages through run_lib (score model; upper / lower score models for posterior SM; CE, DLSM and
total-loss classifiers), then measures D_P / D_L against the oracle, samples every method with the annealed PC
sampler, computes class-wise precision / recall, and writes the table (Markdown + JSON) and the plots into the
workdir (used as given, no results/ prefix). Finished stages are reused when the command is run again.
"""
import logging
import os
import time

import torch
from absl import flags
from absl import logging as absl_logging
from ml_collections.config_flags import config_flags
from tqdm.auto import tqdm

import plumbing
import run_lib
import tables
from configs.toy.default_toy_configs import STAGES, stage_config
from models import checkpoint as ckpt
from models import utils as mutils
from toy import CLASS_NAMES
from toy import data as toy_data
from toy import metrics as toy_metrics
from toy import plots as toy_plots
from toy import samplers as toy_samplers
from toy import table as toy_table

FLAGS = flags.FLAGS


def classifier_stage(method):
  """The training stage of the method's classifier (configs/toy/default_toy_configs.STAGES)."""
  return f'classifier_{method.loss}'


def train_stages(config, workdir, timings, stages=tuple(STAGES)):
  """Train the stages (all by default) with run_lib (classifiers on the trained score model, so 'score' must be
  among them); returns {stage: checkpoint}."""
  paths = {}
  for index, stage in enumerate(stages):
    stage_spec = STAGES[stage]
    start = time.time()
    training_config = stage_config(config, stage)
    if stage_spec['model'] == 'classifier':
      training_config.model.score_restore_path = paths['score']
    stage_dir = os.path.join(workdir, stage)
    tqdm.write(f'[{index + 1}/{len(stages)}] {stage}: {training_config.training.n_iters + 1} updates of batch '
               f'{training_config.training.batch_size}, lr {training_config.optim.lr:g}')
    run_lib.train(training_config, stage_dir, stage_spec['model'])
    paths[stage] = ckpt.latest_checkpoint(os.path.join(stage_dir, 'checkpoints'))
    timings[stage] = time.time() - start
  return paths


def load_networks(config, paths):
  """The trained networks of the stages in `paths`, eval mode, no parameter gradients."""
  networks = {}
  for stage in paths:
    if STAGES[stage]['model'] == 'score':
      net = ckpt.restore_score_model(paths[stage], mutils.create_model(config), device=mutils.get_device(config))
    else:
      net = ckpt.restore_classifier(paths[stage], mutils.create_classifier(config), mutils.get_device(config))
    networks[stage] = net.eval().requires_grad_(False)
  return networks


def scale_of(config, method):
  return tables.method_scale(method, config.eval.scaling_baseline)


def grid_fields(config, networks, grid):
  """On the grid (CPU tensors): the prior score s(x, sigma), the likelihood fields {method: [upper, lower]} and
  the posterior fields {method: [upper, lower]} of every method (posterior SM: its class score models)."""
  sigma, device = config.model.std, mutils.get_device(config)
  grid = grid.to(device)
  prior = toy_metrics.prior_score(networks['score'], grid, sigma).cpu()
  likelihoods, fields = {}, {}
  for method in tables.METHODS:
    likelihoods[method.name] = [toy_metrics.likelihood_score(networks[classifier_stage(method)], grid, sigma, c).cpu()
                                for c in range(len(CLASS_NAMES))]
    fields[method.name] = [prior + scale_of(config, method) * likelihood for likelihood in likelihoods[method.name]]
  fields['posterior_sm'] = [toy_metrics.prior_score(networks[f'score_{name}'], grid, sigma).cpu()
                            for name in CLASS_NAMES]
  return prior, likelihoods, fields


def distance_rows(config, oracle, prior, likelihoods, fields):
  """E[D_P] and E[D_L] per method and class on the grid, and D_full of the prior score model."""
  rows = {}
  for method in tables.METHODS:
    distances = toy_metrics.classifier_distances(oracle, prior, likelihoods[method.name], scale_of(config, method))
    rows[method.name] = {'scale': scale_of(config, method),
                         'D_P': [distances[f'D_P_{name}'] for name in CLASS_NAMES],
                         'D_L': [distances[f'D_L_{name}'] for name in CLASS_NAMES]}
  distances = toy_metrics.posterior_sm_distances(oracle, fields['posterior_sm'])
  rows['posterior_sm'] = {'D_P': [distances[f'D_P_{name}'] for name in CLASS_NAMES], 'D_L': None}
  rows['oracle'] = {'D_P': [0., 0.], 'D_L': [0., 0.]}
  return rows, toy_metrics.mean_distance(oracle['score_full'], prior)


def sampling_jobs(config, networks):
  """(row, score_fn, classifier_fn, scale, sampling config) for every sampled method."""
  jobs = [(method.name, networks['score'], networks[classifier_stage(method)], scale_of(config, method), config)
          for method in tables.METHODS]
  jobs.append(('posterior_sm', None, None, 1.0, config))
  if config.eval.compare_original_sampler:
    original = config.copy_and_resolve_references()
    with original.unlocked():
      original.sampling.method = 'original'
    jobs.append(('ours_original_sampler', networks['score'], networks['classifier_total'], 1.0, original))
  return jobs


def sample_methods(config, networks, device):
  """{row: [samples of class 0, class 1]}; each (method, class) draws from its own seed."""
  jobs = sampling_jobs(config, networks)
  samples = {}
  with tqdm(total=len(jobs) * len(CLASS_NAMES), desc='sampling', mininterval=1.0) as progress:
    for job_index, (method, score_net, classifier, scale, job_config) in enumerate(jobs):
      samples[method] = []
      for c, name in enumerate(CLASS_NAMES):
        progress.set_postfix_str(f'{method} / {name}')
        score_fn = networks[f'score_{name}'] if method == 'posterior_sm' else score_net
        torch.manual_seed(config.seed + 1000 * job_index + c)
        points = toy_samplers.sample_class(score_fn, classifier, c, scale, config.eval.num_samples, job_config,
                                           device)
        samples[method].append(points.cpu().double().numpy())
        progress.update(1)
  return samples


def add_sample_quality(config, rows, samples, positions, labels):
  """Class-wise precision / recall / density / coverage of every sampled method (and of exact draws, the oracle
  row) against the class points plus sigma·z, as the original."""
  generator = torch.Generator().manual_seed(config.seed)
  samples['oracle'] = toy_data.exact_draws_per_class(positions, labels, config.model.std, config.eval.num_samples,
                                                     generator)
  real = toy_data.reference_sets(positions, labels, config.model.std, generator)
  for method, per_class in samples.items():
    prdc = toy_metrics.classwise_prdc(real, per_class, config.eval.nearest_k)
    rows.setdefault(method, {'D_P': None, 'D_L': None})
    rows[method].update({key: [m[key] for m in prdc] for key in ('precision', 'recall', 'density', 'coverage')})


def evaluate(config, networks, workdir, timings):
  """D_P / D_L on the grid, samples and their class-wise PRDC, plots; returns (results, plot paths)."""
  positions, labels = toy_data.moons_dataset('all')
  grid = toy_data.evaluation_grid(config.sampling.width, config.sampling.height, config.sampling.density)
  oracle = toy_metrics.oracle_scores(positions, labels, grid, config.model.std)
  prior, likelihoods, fields = grid_fields(config, networks, grid)
  rows, d_full = distance_rows(config, oracle, prior, likelihoods, fields)
  start = time.time()
  samples = sample_methods(config, networks, mutils.get_device(config))
  timings['sampling'] = time.time() - start
  start = time.time()
  add_sample_quality(config, rows, samples, positions, labels)
  timings['prdc'] = time.time() - start
  plots = make_plots(config, grid, oracle, fields, samples, workdir)
  results = {'seed': config.seed, 'sigma': config.model.std, 'scaling_factor': config.eval.scaling_baseline,
             'sampler': config.sampling.method, 'num_samples_per_class': config.eval.num_samples,
             'D_full': d_full, 'rows': rows, 'timings_s': timings, 'paper': toy_table.PAPER_TABLE}
  return results, plots


def make_plots(config, grid, oracle, fields, samples, workdir):
  titles = {'base': 'base (CE)', 'scaling': f'scaling (λ={config.eval.scaling_baseline:g})',
            'posterior_sm': 'posterior SM', 'ours': 'ours (total)'}
  field_panels = {title: fields[key] for key, title in titles.items()}
  field_panels['oracle'] = [oracle[f'score_{name}'] for name in CLASS_NAMES]
  sample_panels = {title: samples[key] for key, title in titles.items()}
  sample_panels['oracle (exact draws)'] = samples['oracle']
  paths = [toy_plots.plot_score_fields(grid, field_panels, os.path.join(workdir, 'posterior_scores.png')),
           toy_plots.plot_samples(sample_panels, os.path.join(workdir, 'samples.png'))]
  if 'ours_original_sampler' in samples:
    compare = {'ours, annealed PC sampler': samples['ours'],
               'ours, original sampler (T1)': samples['ours_original_sampler'],
               'exact draws (data + σz)': samples['oracle']}
    paths.append(toy_plots.plot_samples(compare, os.path.join(workdir, 'samplers.png')))
  return paths


def run_pipeline(config, workdir):
  """Train all stages, evaluate, write the table and plots; returns the results dict."""
  os.makedirs(workdir, exist_ok=True)
  timings, start = {}, time.time()
  paths = train_stages(config, workdir, timings)
  timings['training'] = time.time() - start
  networks = load_networks(config, paths)
  results, plots = evaluate(config, networks, workdir, timings)
  timings['total'] = time.time() - start
  results['paper_ordering_holds'] = toy_table.paper_ordering_holds(results['rows'])
  table_paths = toy_table.write_table(results, workdir)
  print(toy_table.format_table(results['rows'], config.eval.scaling_baseline))
  print(f"\nThe paper's ordering E[D_P] ours < base < scaling holds for both classes: "
        f"{'yes' if results['paper_ordering_holds'] else 'NO'}.")
  print(f"D_full (prior score model) = {results['D_full']:.3f}; sigma = {config.model.std:g}; "
        f"{config.eval.num_samples} samples per class ({config.sampling.method} sampler); "
        f"{timings['total']:.0f} s in total.")
  print('Table: ' + ', '.join(table_paths))
  print('Plots: ' + ', '.join(plots))
  return results


def define_flags():
  """The command line; defined only when run as a script, so tests can import this module beside other scripts."""
  config_flags.DEFINE_config_file('config', None, 'Toy pipeline config (configs/toy/demo.py or paper.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', 'toy_demo', 'Folder of the run (stage checkpoints, table, plots).')
  flags.DEFINE_integer('num_threads', 1, 'CPU threads for torch (0: torch\'s default). The toy networks are too small '
                       'to gain from more, and extra threads slow down a machine that is busy with anything else.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  # The per-stage progress bars carry the losses; INFO lines still go to each stage's log.txt.
  absl_logging.get_absl_handler().setLevel(logging.WARNING)
  if FLAGS.num_threads > 0:
    torch.set_num_threads(FLAGS.num_threads)
  run_pipeline(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  plumbing.run_script(main)
