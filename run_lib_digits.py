"""The digits experiment end to end (`make digits`): the paper's CIFAR comparison redone on 8x8 handwritten digits.

  python run_lib_digits.py [--workdir digits_run] [--seeds 0,1,2] [--jobs 2] [--tiny]

A thin driver over the real command lines, one process per stage, as a user would type them:
  main.py --model score                                   (one score model, shared by every seed)
  main.py --model classifier --restore <score>            (CE, DLSM and total loss, per seed)
  run_lib_sampling.py --mode full [--scale λ]             (base: CE λ=1, scaling: CE λ=eval.scaling_baseline,
                                                           dlsm, ours: total loss, per seed)
  run_lib_evaluation.py --stat --latent --fidis --prdc    (full mode, then class mode; reference-classifier space)
  run_lib_evaluation.py --posterior                       (the networks' scores against the exact posterior scores)
  run_lib_cas.py                                          (the reference CNN trained on the samples only)
Runs live in results/digits/; the table (digits_table.md / .json) and one sample grid per method (rows = classes)
go to --workdir, with posterior_errors.png (the posterior-score errors against σ per method). A stage whose output exists is skipped, so a rerun reuses finished stages; delete results/digits
to start afresh. --jobs stages run at once, each a child process on one torch thread (the 8x8 networks gain little
from a second thread; a second process doubles the throughput on 2 cores). With --jobs above 1 each child writes to
results/digits/logs/<stage>.log and the driver shows one progress bar per phase. --tiny runs every stage with a few
updates, steps and samples (the plumbing in about a minute; its numbers mean nothing).
"""
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch
from absl import flags
from tqdm.auto import tqdm

import evaluation
import fileio
import plumbing
import tables
from configs.digits import eval as digits_eval
from models import checkpoint as ckpt

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'digits_run', 'Folder of the table and the sample grids.')
flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds of the classifier, sampling and CAS stages.')
flags.DEFINE_integer('score_seed', 42, 'config.seed of the one score model shared by every seed.')
flags.DEFINE_integer('jobs', 2, 'stages run at once, one process and one torch thread each (the machine\'s cores).')
flags.DEFINE_bool('tiny', False, 'A few updates, steps and samples per stage: checks the plumbing in seconds.')

REPO = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(REPO, 'configs', 'digits')
RUN_ROOT = 'digits'  # under results/
METHODS = tables.METHODS  # (table row, classifier loss, guidance scale), shared with the toy and the benchmarks
SCALING_BASELINE = digits_eval.get_config().eval.scaling_baseline  # λ of the scaled-CE row
TINY_STEPS = ['--config.training.n_iters=3', '--config.training.batch_size=16', '--config.training.eval_freq=2',
              '--config.model.num_scales=3']  # num_scales sizes the score model's σ table
TINY = {  # --tiny: overrides per script
    'score': TINY_STEPS,
    'classifier': TINY_STEPS,
    'sampling': ['--config.model.num_scales=3', '--config.sampling.num_steps=3', '--config.training.batch_size=10',
                 '--config.eval.num_samples=100'],
    'evaluation': ['--config.eval.reference_steps=20', '--config.eval.nearest_k=2'],
    'posterior': ['--config.model.num_scales=3', '--config.eval.posterior_draws=1'],
    'cas': ['--config.training.n_iters=3', '--config.training.eval_freq=2', '--config.training.batch_size=10',
            '--config.eval.reference_steps=20'],
}


def results(*parts):
  return os.path.join('results', RUN_ROOT, *parts)


REFERENCE = results('reference_classifier.pth')  # shared by every seed and method: one feature space


class StageFailed(plumbing.ScriptError):
  """A child process exited with an error; the message says where its output is."""


class Stages:
  """At most --jobs child processes at once; after a failure no new stage starts and the running ones are stopped."""

  def __init__(self, jobs):
    self.slots = threading.BoundedSemaphore(jobs)
    self.running = set()
    self.failed = threading.Event()
    self.first_failure = None  # the message of the stage that failed first
    self.lock = threading.Lock()

  def run(self, command, environment, log_path, header, failure):
    """(the child's exit status, its seconds): its output goes to log_path, or to the terminal when log_path is None;
    `header` is printed when it starts, `failure` is kept should it fail first. The status is negative when the
    child was stopped, or not started, because another stage failed."""
    with self.slots:
      with self.lock:
        if self.failed.is_set():
          return -1, 0.
        tqdm.write(header)
        sys.stdout.flush()  # the header before the child's own output, also when stdout is a pipe
        start = time.time()
        log = open(log_path, 'w') if log_path else None
        child = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT if log else None)
        self.running.add(child)
      status = child.wait()
      with self.lock:
        self.running.discard(child)
        if log:
          log.close()
        if status and not self.failed.is_set():
          self.failed.set()
          self.first_failure = failure
          for other in self.running:
            other.terminate()
      return status, time.time() - start


STAGES = None  # the Stages of this run, made in main()


def stage_log(name):
  return results('logs', name.replace('/', '_').replace(' ', '_') + '.log')


def run_stage(script, args, kind, timings, name):
  """One real command line in a child process, its wall time to `timings`. With --jobs 1 its progress bars go to
  the terminal; otherwise its output goes to stage_log(name)."""
  command = [sys.executable, os.path.join(REPO, script)] + args + (TINY[kind] if FLAGS.tiny else [])
  environment = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
  log_path = None if FLAGS.jobs == 1 else stage_log(name)
  if log_path:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
  header = f'== {name}: {" ".join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in command[1:])}'
  where = 'its message is above' if log_path is None else f'its output is in {log_path}'
  status, seconds = STAGES.run(command, environment, log_path, header, f'stage {name!r} failed; {where}')
  if status:
    raise StageFailed(STAGES.first_failure)
  timings[name] = round(seconds, 1)


def finish(futures, phase, position):
  """{key: result} of {key: future}, with one progress bar for the phase; the first failure is raised."""
  with tqdm(total=len(futures), desc=phase, position=position) as bar:
    for future in as_completed(futures.values()):
      future.result()
      bar.update()
  return {key: future.result() for key, future in futures.items()}


def final_checkpoint(workdir):
  return ckpt.latest_checkpoint(os.path.join('results', workdir, 'checkpoints'))


def train(kind, config, workdir, seed, timings, restore=None):
  """main.py for the score model or a classifier, skipped when the run already holds a checkpoint."""
  if final_checkpoint(workdir) is None:
    args = ['--config', config, '--model', kind, '--workdir', workdir, f'--config.seed={seed}']
    run_stage('main.py', args + (['--restore', restore] if restore else []), kind, timings, workdir)
  return final_checkpoint(workdir)


def train_classifier(seed, loss, score, timings):
  return train('classifier', os.path.join(CONFIGS, f'classifier_{loss}.py'),
               f'{RUN_ROOT}/seed{seed}/classifier_{loss}', seed, timings, score)


def guidance_flags(score, classifier, scale):
  return ['--restore', score, '--restore_classifier', classifier, f'--scale={scale}']


def sample(workdir, networks, seed, timings):
  """run_lib_sampling.py for one method; files already complete are skipped by the script itself."""
  args = ['--config', os.path.join(CONFIGS, 'eval.py'), '--mode', 'full', '--workdir', workdir, *networks,
          f'--config.sampling.seed={seed}']
  run_stage('run_lib_sampling.py', args, 'sampling', timings, f'{workdir} sampling')


def evaluate(workdir, seed, timings, networks):
  """run_lib_evaluation.py in full then class mode and --posterior (with `networks`: the --restore, --restore_classifier
  and --scale flags of the sampling stage), then run_lib_cas.py; each skipped when metrics.json has its metrics."""
  metrics = read_metrics(workdir)
  common = [f'--config.eval.reference_classifier={REFERENCE}', '--workdir', workdir]
  eval_config = ['--config', os.path.join(CONFIGS, 'eval.py')]
  if 'fd' not in metrics.get('full', {}):
    run_stage('run_lib_evaluation.py', eval_config + common + ['--stat', '--latent', '--fidis', '--prdc',
                                                               '--mode', 'full'], 'evaluation', timings,
              f'{workdir} evaluation (full)')
  if 'cw_fd' not in metrics.get('class', {}):
    run_stage('run_lib_evaluation.py', eval_config + common + ['--fidis', '--prdc', '--mode', 'class'],
              'evaluation', timings, f'{workdir} evaluation (class)')
  if 'posterior' not in metrics:
    run_stage('run_lib_evaluation.py', eval_config + networks + ['--workdir', workdir, '--posterior'], 'posterior',
              timings, f'{workdir} posterior scores')
  if 'cas' not in metrics:
    run_stage('run_lib_cas.py', ['--config', os.path.join(CONFIGS, 'cas.py'), f'--config.seed={seed}'] + common,
              'cas', timings, f'{workdir} CAS')
  return read_metrics(workdir)


def read_metrics(workdir):
  path = os.path.join('results', workdir, 'metrics.json')
  if not os.path.exists(path):
    return {}
  with open(path) as file:
    return json.load(file)


def sample_and_evaluate(seed, method, classifier, score, timings):
  """Sampling, evaluation and CAS of one method and seed (a finished evaluation is not looked at again)."""
  workdir = f'{RUN_ROOT}/seed{seed}/{method.name}'
  networks = guidance_flags(score, classifier, tables.method_scale(method, SCALING_BASELINE))
  if not evaluated(read_metrics(workdir)):
    sample(workdir, networks, seed, timings)
  return evaluate(workdir, seed, timings, networks)


def evaluated(metrics):
  """True when a method's evaluation is complete (its samples are then not looked at again)."""
  return 'fd' in metrics.get('full', {}) and 'cw_fd' in metrics.get('class', {}) and 'cas' in metrics


def train_reference():
  """The reference classifier, trained once here (on one thread, beside the score model's stage) before the
  evaluations that share it run side by side."""
  torch.set_num_threads(1)
  config = digits_eval.get_config()
  config.eval.reference_classifier = REFERENCE
  if FLAGS.tiny:
    config.eval.reference_steps = 20
  evaluation.load_or_train_reference(config, log=tqdm.write)


def run_experiment(seeds, timings):
  """The score model (the reference classifier meanwhile), then every classifier and every method's samples and
  metrics; a method waits for its own classifier only, so it can take a slot that the last classifiers leave free:
  {seed: {method: metrics}}."""
  losses = tables.method_losses()
  with ThreadPoolExecutor(max_workers=len(seeds) * (len(losses) + len(METHODS)) + 1) as threads:
    score_job = threads.submit(train, 'score', os.path.join(CONFIGS, 'score.py'), f'{RUN_ROOT}/score',
                               FLAGS.score_seed, timings)
    train_reference()
    score = score_job.result()
    classifiers = {(seed, loss): threads.submit(train_classifier, seed, loss, score, timings)
                   for seed in seeds for loss in losses}
    methods = {(seed, method.name): threads.submit(lambda seed, method: sample_and_evaluate(
                   seed, method, classifiers[seed, method.loss].result(), score, timings), seed, method)
               for seed in seeds for method in METHODS}
    try:
      finish(classifiers, 'classifiers', 0)
      metrics = finish(methods, 'sampling and evaluation', 1)
    except StageFailed:
      STAGES.failed.set()  # the other threads start nothing more
      raise
  return {seed: {method: metrics[seed, method] for method, _, _ in METHODS} for seed in seeds}


# ---------------------------------------------------------------------------------------------- table and grids

PRDC = ('precision', 'recall', 'density', 'coverage')
# (column, path in metrics.json, format); numbers are fractions except FD
COLUMNS = (
    ('recognised (CW)', ('class', 'cw_sample_accuracy'), '.3f'),
    ('FD', ('full', 'fd'), '.2f'),
    ('CW FD', ('class', 'cw_fd'), '.2f'),
    *((name, ('full', name), '.3f') for name in PRDC),
    *((f'CW {name}', ('class', f'cw_{name}'), '.3f') for name in PRDC),
    ('CAS', ('cas', 'final_accuracy'), '.3f'),
)
POSTERIOR_SIGMAS = [f'{sigma:g}' for sigma in digits_eval.get_config().eval.posterior_sigmas]
# the posterior-score errors per σ (evaluation.posterior_score_errors): of the method, then of its score model alone
POSTERIOR_COLUMNS = tuple((f'{key} σ={sigma}', ('posterior', sigma, key), '.3f') for key in ('L', 'C')
                          for sigma in POSTERIOR_SIGMAS) + (('classifier accuracy', ('posterior', 'clean', 'accuracy'),
                                                             '.3f'),)
PRIOR_COLUMNS = tuple((f'{key} σ={sigma}', ('posterior', sigma, *key.split('/')), '.4f')
                      for key in ('C_unguided', 'share', 'score_error', 'half_split/likelihood')
                      for sigma in POSTERIOR_SIGMAS)
TRUSTED_HALF_SPLIT = 0.1  # the oracle is trusted at σ where half the training set moves its likelihood score less


def lookup(metrics, path):
  for key in path:
    metrics = metrics[key]
  return float(metrics)


def seed_statistics(per_seed, columns=COLUMNS + POSTERIOR_COLUMNS + PRIOR_COLUMNS):
  """{method: {column: {'mean', 'std', 'values'}}} over the seeds (std with ddof 0)."""
  table = {}
  for method, _, _ in METHODS:
    table[method] = {}
    for column, path, _ in columns:
      values = [lookup(per_seed[seed][method], path) for seed in per_seed]
      mean, std = tables.mean_and_std(values)
      table[method][column] = dict(mean=mean, std=std, values=values)
  return table


def cell(entry, fmt, num_seeds):
  return f'{entry["mean"]:{fmt}} ± {entry["std"]:{fmt}}' if num_seeds > 1 else f'{entry["mean"]:{fmt}}'


def method_table(table, num_seeds, columns=COLUMNS):
  """One row per method, one column per (column, path, format) of `columns`."""
  rows = [[tables.row_label(method, SCALING_BASELINE)] + [cell(table[method][column], fmt, num_seeds)
                                                           for column, _, fmt in columns] for method, _, _ in METHODS]
  return tables.markdown_table(['method'] + [column for column, *_ in columns], rows) + '\n'


def prior_table(table, num_seeds):
  """The rows shared by every method (the score model and the oracle): one row per quantity, one column per σ."""
  first = table[METHODS[0][0]]
  trusted = [first[f'half_split/likelihood σ={sigma}']['mean'] <= TRUSTED_HALF_SPLIT for sigma in POSTERIOR_SIGMAS]
  head = ['σ'] + [f'{s}{"" if ok else " (not trusted)"}' for s, ok in zip(POSTERIOR_SIGMAS, trusted)]
  rows = [[name] + [cell(first[f'{key} σ={sigma}'], '.4f', num_seeds) for sigma in POSTERIOR_SIGMAS]
          for key, name in (('C_unguided', 'C unguided (s_θ alone)'), ('share', 'share (perfect classifier\'s gain)'),
                            ('score_error', 'score model error'), ('half_split/likelihood', 'half-split, likelihood'))]
  return tables.markdown_table(head, rows) + '\n'


def write_grids(workdir, seed):
  """One PNG per method: row c holds the first 10 samples of class c (nearest-neighbour upscaled x4)."""
  for method, _, _ in METHODS:
    samples_dir = os.path.join('results', RUN_ROOT, f'seed{seed}', method, 'eval_samples')
    images, labels = evaluation.load_class_samples(samples_dir, 10)
    rows = np.concatenate([images[labels == c][:10] for c in range(10)])
    x = rows.transpose(0, 3, 1, 2).repeat(4, axis=2).repeat(4, axis=3) / 255.
    fileio.save_png_grid(x, os.path.join(workdir, f'samples_{method}.png'), nrow=len(rows) // 10)


def write_report(workdir, per_seed, timings, total_seconds):
  """digits_table.json (every number), digits_table.md (the tables) and the posterior-error plot; returns the text."""
  table = seed_statistics(per_seed)
  first = per_seed[next(iter(per_seed))]['ours']
  report = dict(table=table, seeds=list(per_seed), timings_s=timings, total_s=round(total_seconds, 1),
                reference_test_accuracy=first['reference']['test_accuracy'],
                trusted_half_split=TRUSTED_HALF_SPLIT, load_average=os.getloadavg(), per_seed=per_seed)
  evaluation.write_json_atomic(os.path.join(workdir, 'digits_table.json'), report)
  num_seeds = len(per_seed)
  text = (f'# Digits: CE vs DLSM vs total (seeds {", ".join(map(str, per_seed))}; mean ± std over seeds)\n\n'
          + method_table(table, num_seeds)
          + f'\nReference classifier test accuracy: {100 * report["reference_test_accuracy"]:.2f}%. '
          f'Wall time {total_seconds / 60:.1f} min.\n\n'
          '## Posterior-score errors against the exact scores of the noisy training digits\n\n'
          'L: E‖λ∇log p_φ(y|x̃) − ∇log p_σ(y|x̃)‖² / E‖∇log p_σ(y|x̃)‖²; C: the same for s_θ + λ∇log p_φ against '
          '∇log p_σ(x̃|y) (x̃ = test digit + σz).\n\n'
          + method_table(table, num_seeds, POSTERIOR_COLUMNS) + '\n' + prior_table(table, num_seeds))
  fileio.write_text_atomic(os.path.join(workdir, 'digits_table.md'), text)
  plot_posterior_errors(table, os.path.join(workdir, 'posterior_errors.png'))
  return text


def plot_posterior_errors(table, path):
  """L and C against σ per method (mean and seed spread), the unguided C and the score model's error beside C."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  sigmas = [float(s) for s in POSTERIOR_SIGMAS]
  figure, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ('L', 'C')):
    curves = [(tables.row_label(method, SCALING_BASELINE), table[method], key) for method, _, _ in METHODS]
    if key == 'C':
      curves += [('unguided s_θ', table['base'], 'C_unguided'), ('score model error', table['base'], 'score_error')]
    for label, rows, name in curves:
      mean = np.array([rows[f'{name} σ={s}']['mean'] for s in POSTERIOR_SIGMAS])
      std = np.array([rows[f'{name} σ={s}']['std'] for s in POSTERIOR_SIGMAS])
      ax.errorbar(sigmas, mean, yerr=std, label=label, marker='o', capsize=3,
                  linestyle='--' if name != key else '-')
    ax.set(xscale='log', yscale='log', xlabel='σ', title=f'{key}: relative squared error')
    ax.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv):
  del argv
  start = time.time()
  seeds = [int(s) for s in FLAGS.seeds.split(',')]
  os.makedirs(FLAGS.workdir, exist_ok=True)
  timings = {}
  global STAGES
  STAGES = Stages(FLAGS.jobs)
  per_seed = run_experiment(seeds, timings)
  write_grids(FLAGS.workdir, seeds[0])
  print(write_report(FLAGS.workdir, per_seed, timings, time.time() - start))


if __name__ == '__main__':
  plumbing.run_script(main)
