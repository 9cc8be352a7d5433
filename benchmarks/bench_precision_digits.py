"""Do the reduced-precision sampling modes keep the quality of the samples? Measured on the `make digits` networks.

  python benchmarks/bench_precision_digits.py [--seeds 0 1 2] [--modes fp32 bf16 bf16+compile "bf16 all"] [--jobs 2]

For every mode and seed, the `ours` row of `make digits` again with only the precision changed: the shared score
model and the seed's total-loss classifier (results/digits, the newest checkpoint of each), λ = 1, the sampler and
sampling seed of configs/digits/eval.py, through the real command lines (run_lib_sampling.py, then
run_lib_evaluation.py in full and class mode and with --posterior, the networks run in the same mode). Modes:
`fp32` (the default), `bf16` (sampling.dtype: the score network under bf16 autocast), `bf16+compile` (and
torch.compile), `bf16 all` (sampling.classifier_dtype too: the classifier's forward and input-gradient). Runs go to
results/digits_precision/<mode>/seed<s>; a finished run is not redone. Prints mean ± std over the seeds per mode
and writes <out>/bench_precision_digits.json / .md; the verdict per mode: every quality column within the larger of
the two seed spreads (std), or within 1 % where neither spreads.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import tables  # noqa: E402
from bench_sampler_nfe import digits_files  # noqa: E402
from run_lib_digits import COLUMNS, POSTERIOR_SIGMAS, cell, lookup, read_metrics  # noqa: E402

MODES = {  # name: config overrides
    'fp32': [],
    'bf16': ['--config.sampling.dtype=bfloat16'],
    'bf16+compile': ['--config.sampling.dtype=bfloat16', '--config.sampling.compile=True'],
    'bf16 all': ['--config.sampling.dtype=bfloat16', '--config.sampling.classifier_dtype=bfloat16'],
}
QUALITY = tuple(c for c in COLUMNS if c[0] != 'CAS') + tuple(
    (f'{key} σ={sigma}', ('posterior', sigma, key), '.4f') for key in ('L', 'C', 'score_error')
    for sigma in POSTERIOR_SIGMAS)
RELATIVE_FLOOR = 0.01  # the tolerance of a column without seed spread, relative to fp32's mean
EVAL_CONFIG = os.path.join(REPO, 'configs', 'digits', 'eval.py')


def guidance_flags(root, seed):
  """The flags of the shared score model and the seed's total-loss classifier (bench_sampler_nfe.digits_files)."""
  paths = digits_files(root, f'seed{seed}', 'total')
  return ['--restore', paths['score model'], '--restore_classifier', paths['classifier'], '--scale=1']


def run(script, args, log):
  command = [sys.executable, os.path.join(REPO, script), '--config', EVAL_CONFIG, *args]
  environment = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
  with open(log, 'a') as file:
    if subprocess.run(command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT, env=environment).returncode:
      raise RuntimeError(f'{script} failed; its output is in {log}')


def mode_run(mode, seed, root):
  """metrics.json of one (mode, seed) run, sampled and evaluated unless it is already there."""
  workdir = f'digits_precision/{mode.replace(" ", "_")}/seed{seed}'
  folder = os.path.join(REPO, 'results', workdir)
  if 'posterior' not in read_metrics(workdir):
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, 'log.txt')
    flags = guidance_flags(root, seed) + MODES[mode]
    reference = f'--config.eval.reference_classifier={os.path.join(root, "reference_classifier.pth")}'
    run('run_lib_sampling.py', ['--mode', 'full', '--workdir', workdir, f'--config.sampling.seed={seed}', *flags],
        log)
    run('run_lib_evaluation.py', ['--workdir', workdir, reference, '--stat', '--latent', '--fidis', '--prdc',
                                  '--mode', 'full'], log)
    run('run_lib_evaluation.py', ['--workdir', workdir, reference, '--fidis', '--prdc', '--mode', 'class'], log)
    run('run_lib_evaluation.py', ['--workdir', workdir, '--posterior', *flags], log)
  metrics = read_metrics(workdir)
  print(f'{mode} seed {seed}: recognised {lookup(metrics, QUALITY[0][1]):.3f}, FD {lookup(metrics, QUALITY[1][1]):.2f}',
        flush=True)
  return metrics


def summary(per_run, modes, seeds):
  """{mode: {column: {'mean', 'std', 'values'}}} and {mode: verdict}: the columns whose mean differs from fp32's by
  more than the larger seed spread, or by more than 1 % where neither spreads (the score model is one for every
  seed, so its error has no seed spread)."""
  table = {mode: {column: dict(values=[lookup(per_run[mode, seed], path) for seed in seeds])
                  for column, path, _ in QUALITY} for mode in modes}
  for entries in table.values():
    for entry in entries.values():
      entry.update(mean=float(np.mean(entry['values'])), std=float(np.std(entry['values'])))
  verdicts = {}
  for mode in modes:
    off = [column for column, *_ in QUALITY if abs(table[mode][column]['mean'] - table['fp32'][column]['mean'])
           > max(table[mode][column]['std'], table['fp32'][column]['std'], RELATIVE_FLOOR * abs(
               table['fp32'][column]['mean']))]
    verdicts[mode] = dict(within_fp32_spread=not off, outside=off)
  return table, verdicts


def markdown(table, verdicts, seeds):
  head = ['mode', *(column for column, *_ in QUALITY), 'outside fp32\'s spread']
  rows = [[mode, *(cell(entries[column], fmt, len(seeds)) for column, _, fmt in QUALITY),
           ', '.join(verdicts[mode]['outside']) or 'none'] for mode, entries in table.items()]
  return tables.markdown_table(head, rows) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', default=os.path.join(REPO, 'results', 'digits'), help='the runs of make digits')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
  parser.add_argument('--jobs', type=int, default=2, help='runs at once, one process and one thread each')
  parser.add_argument('--out', default=os.path.join(REPO, 'results', 'bench_precision_digits'))
  args = parser.parse_args(argv)
  args.root, args.out = os.path.abspath(args.root), os.path.abspath(args.out)
  os.chdir(REPO)  # read_metrics reads results/<workdir>/metrics.json; the command lines run here too
  modes = ['fp32'] + [m for m in args.modes if m != 'fp32']
  jobs = [(mode, seed) for mode in modes for seed in args.seeds]
  with ThreadPoolExecutor(args.jobs) as pool:
    per_run = dict(zip(jobs, pool.map(lambda job: mode_run(*job, args.root), jobs)))
  table, verdicts = summary(per_run, modes, args.seeds)
  text = markdown(table, verdicts, args.seeds)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'bench_precision_digits.md'), 'w') as file:
    file.write(text)
  with open(os.path.join(args.out, 'bench_precision_digits.json'), 'w') as file:
    json.dump(dict(table=table, verdicts=verdicts, args=vars(args)), file, indent=1)


if __name__ == '__main__':
  main()
