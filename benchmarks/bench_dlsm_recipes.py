"""Which classifier recipe makes DLSM do its job on digits? Judged by the posterior-score errors, not by samples.

  python benchmarks/bench_dlsm_recipes.py --score S.pth [--variants A,B] [--seeds 0] [--jobs 2]

Each variant is configs/digits/classifier_<loss>.py with a few overrides (the DLSM weighting σ^w, the CE coefficient,
updates, learning rate), trained by the real command line (main.py --model classifier --restore S) into
results/dlsm_recipes/<variant>/seed<s>, then measured by run_lib_evaluation.py --posterior (λ = 1): L and C per σ
(the relative squared errors of the likelihood score and of the guided conditional score against the exact scores of
the noisy training digits), the unguided C and the share, and the classifier's accuracy on the test digits at the
smallest σ. A finished stage is not run again. Prints one row per run and writes <out>/bench_dlsm_recipes.json and
.md (the table of every variant and seed, with the training time).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from models import checkpoint as ckpt  # noqa: E402

TRUSTED_SIGMAS = ('1', '1.5', '2', '4')  # where half the training digits move the likelihood score by < 10 %


def variant(loss, weighting=1, coef=1., updates=2000, lr=1e-3, batch=96):
  """(loss, command-line overrides) of one recipe."""
  return loss, [f'--config.model.weighting_dlsm={weighting}', f'--config.model.coef={coef}',
                f'--config.training.n_iters={updates}', f'--config.optim.lr={lr}',
                f'--config.training.batch_size={batch}', f'--config.training.snapshot_freq={updates}']


VARIANTS = {  # name: variant(...)
    'ce': variant('ce'),
    'dlsm w0': variant('dlsm', weighting=0),
    'dlsm w1': variant('dlsm', weighting=1),
    'dlsm w2': variant('dlsm', weighting=2),
    'total w0 c1': variant('total', weighting=0),
    'total w1 c1': variant('total', weighting=1),
    'total w2 c1': variant('total', weighting=2),
    'total w0 c0.125': variant('total', weighting=0, coef=0.125),
    'total w1 c0.125': variant('total', weighting=1, coef=0.125),
    'total w2 c0.125': variant('total', weighting=2, coef=0.125),
    'total w3 c0.125': variant('total', weighting=3, coef=0.125),
    'total w4 c0.125': variant('total', weighting=4, coef=0.125),
    'total w3 c0.125 6k': variant('total', weighting=3, coef=0.125, updates=6000),
    'total w2 c0.05': variant('total', weighting=2, coef=0.05),
    'total w2 c0.02': variant('total', weighting=2, coef=0.02),
    'total w3 c0.05': variant('total', weighting=3, coef=0.05),
    'total w2 c0.125 6k': variant('total', weighting=2, coef=0.125, updates=6000),
    'total w2 c0.125 12k': variant('total', weighting=2, coef=0.125, updates=12000),
    'total w1 c0.125 6k': variant('total', weighting=1, coef=0.125, updates=6000),
    'total w2 c0.125 lr3e-4': variant('total', weighting=2, coef=0.125, lr=3e-4),
    'total w2 c0.125 lr3e-3': variant('total', weighting=2, coef=0.125, lr=3e-3),
    'dlsm w2 6k': variant('dlsm', weighting=2, updates=6000),
    'total w2 c0.01': variant('total', weighting=2, coef=0.01),
    'total w3 c0.02': variant('total', weighting=3, coef=0.02),
    'total w2 c0.02 4k': variant('total', weighting=2, coef=0.02, updates=4000),
    'total w2 c0.02 lr3e-4': variant('total', weighting=2, coef=0.02, lr=3e-4),
    'total w2 c0.02 b192': variant('total', weighting=2, coef=0.02, batch=192),
    'total w2 c0.02 8k': variant('total', weighting=2, coef=0.02, updates=8000),
    'total w2 c0.02 b48 4k': variant('total', weighting=2, coef=0.02, updates=4000, batch=48),
}


def folder(name, seed):
  return f'dlsm_recipes/{name.replace(" ", "_")}/seed{seed}'


def run(command, log_path):
  with open(log_path, 'w') as log:
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                            env=dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')).returncode
  if status:
    raise RuntimeError(f'{" ".join(command[1:3])} failed; its output is in {log_path}')


def train_and_measure(name, seed, score, extra):
  """The row of one variant and seed: train (unless done), --posterior (unless done), read metrics.json."""
  loss, overrides = VARIANTS[name]
  workdir = folder(name, seed)
  root = os.path.join('results', workdir)
  os.makedirs(root, exist_ok=True)
  begin = time.time()
  if ckpt.latest_checkpoint(os.path.join(root, 'checkpoints')) is None:
    run([sys.executable, os.path.join(REPO, 'main.py'), '--config',
         os.path.join(REPO, 'configs', 'digits', f'classifier_{loss}.py'), '--model', 'classifier', '--workdir',
         workdir, '--restore', score, f'--config.seed={seed}', *overrides, *extra], os.path.join(root, 'train.log'))
    with open(os.path.join(root, 'train_seconds.txt'), 'w') as file:
      file.write(f'{time.time() - begin:.1f}\n')
  metrics_path = os.path.join(root, 'metrics.json')
  if not os.path.isfile(metrics_path) or 'posterior' not in json.load(open(metrics_path)):
    run([sys.executable, os.path.join(REPO, 'run_lib_evaluation.py'), '--config',
         os.path.join(REPO, 'configs', 'digits', 'eval.py'), '--workdir', workdir, '--posterior', '--restore', score,
         '--restore_classifier', ckpt.latest_checkpoint(os.path.join(root, 'checkpoints')), '--scale=1'],
        os.path.join(root, 'posterior.log'))
  posterior = json.load(open(metrics_path))['posterior']
  seconds = float(open(os.path.join(root, 'train_seconds.txt')).read())
  row = dict(variant=name, seed=seed, train_seconds=seconds, accuracy=posterior['clean']['accuracy'],
             **{f'{key} σ={s}': posterior[s][key] for s in TRUSTED_SIGMAS for key in ('L', 'C', 'C_unguided', 'share')})
  print(f'{name} seed {seed}: ' + ' | '.join(f'L {s} {row[f"L σ={s}"]:.3f}' for s in TRUSTED_SIGMAS) + ' | '
        + ' | '.join(f'C {s} {row[f"C σ={s}"]:.4f}' for s in TRUSTED_SIGMAS)
        + f' | accuracy {100 * row["accuracy"]:.1f}% | {seconds:.0f} s', flush=True)
  return row


def measured_or_none(name, seed, score, extra):
  """train_and_measure, or None with its one-line error printed (the other runs go on)."""
  try:
    return train_and_measure(name, seed, score, extra)
  except RuntimeError as error:
    print(f'{name} seed {seed}: error: {error}', flush=True)
    return None


def goal_met(row):
  """C ≤ C_unguided − ½·share at σ 1, 2 and 4, and L ≤ 0.5 at σ 1 and 2."""
  return (all(row[f'C σ={s}'] <= row[f'C_unguided σ={s}'] - 0.5 * row[f'share σ={s}'] for s in ('1', '2', '4'))
          and all(row[f'L σ={s}'] <= 0.5 for s in ('1', '2')))


def markdown(rows):
  """One line per variant: mean ± std over its seeds of L and C per trusted σ, accuracy and training time."""
  keys = [f'{key} σ={s}' for key in ('L', 'C') for s in TRUSTED_SIGMAS] + ['accuracy', 'train_seconds']
  lines = ['| variant | seeds | ' + ' | '.join(keys) + ' | goal |', '|' + '---|' * (len(keys) + 3)]
  for name in dict.fromkeys(row['variant'] for row in rows):
    group = [row for row in rows if row['variant'] == name]
    cells = []
    for key in keys:
      values = [row[key] for row in group]
      fmt = '.0f' if key == 'train_seconds' else ('.4f' if key.startswith('C') else '.3f')
      cells.append(f'{np.mean(values):{fmt}}' + (f' ± {np.std(values):{fmt}}' if len(values) > 1 else ''))
    met = sum(goal_met(row) for row in group)
    lines.append(f'| {name} | {",".join(str(r["seed"]) for r in group)} | ' + ' | '.join(cells)
                 + f' | {met}/{len(group)} |')
  unguided = rows[0]
  lines.append('| unguided s_θ (C) / share | | ' + ' | '.join(
      [''] * len(TRUSTED_SIGMAS) + [f'{unguided[f"C_unguided σ={s}"]:.4f} / {unguided[f"share σ={s}"]:.4f}'
                                    for s in TRUSTED_SIGMAS]) + ' | | | |')
  return '\n'.join(lines) + '\n'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--score', required=True, help='the frozen score checkpoint every classifier learns against')
  parser.add_argument('--variants', default=','.join(VARIANTS), help=f'comma separated, of: {", ".join(VARIANTS)}')
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--jobs', type=int, default=2, help='runs at once, one process and one thread each')
  parser.add_argument('--extra', default='', help='further main.py overrides for every run, space separated')
  parser.add_argument('--out', default='results/bench')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  names = args.variants.split(',')
  unknown = [name for name in names if name not in VARIANTS]
  if unknown:
    sys.exit(f'error: unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  jobs = [(name, int(seed)) for name in names for seed in args.seeds.split(',')]
  with ThreadPoolExecutor(args.jobs) as pool:
    rows = [row for row in pool.map(lambda job: measured_or_none(*job, args.score, args.extra.split()), jobs) if row]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'bench_dlsm_recipes.json'), 'w') as file:
    json.dump(dict(rows=rows, score=args.score), file, indent=1)
  table = markdown(rows)
  with open(os.path.join(args.out, 'bench_dlsm_recipes.md'), 'w') as file:
    file.write(table)
  print(table)


if __name__ == '__main__':
  main()
