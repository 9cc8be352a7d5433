"""Seconds per training step with the full CIFAR-10 configs (NCSN++ score model, resnet18_cond 'total' classifier).

  python benchmarks/bench_train.py [--batch 8] [--steps 2] [--device cpu|cuda]

Reference (the original code, batch 8, 2-core CPU): score step ≈ 7.3 s, classifier 'total' step ≈ 2.1 s.
On CUDA the table has exact float32 (TF32 off, as training runs by default), TF32 and bf16-autocast rows.
"""
import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import losses  # noqa: E402
import sde_lib  # noqa: E402
from models import utils as mutils  # noqa: E402
from models.ema import ExponentialMovingAverage  # noqa: E402
from tests.helpers import load_config  # noqa: E402

SCORE_CONFIG = 'configs/score/cifar10_score_configs.py'
CLASSIFIER_CONFIG = 'configs/classifier/cifar10_classifier_resnet18_cond_configs.py'
ORIGINAL_CPU_SECONDS = {'score step': 7.3, "classifier 'total' step": 2.1}


def config_on(path, device):
  config = load_config(path)
  config.device = str(device)
  return config


def seconds_per_step(step, device, steps, precision):
  """Median (wall, process CPU) seconds of `steps` calls after one warm-up call.

  The CPU column helps on a shared machine: divided by the thread count it approximates an unloaded wall time.
  """
  if device.type == 'cuda':
    mutils.use_exact_float32(precision != 'tf32')
  context = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == 'bf16 autocast'
             else contextlib.nullcontext())
  times = []
  for _ in range(steps + 1):
    if device.type == 'cuda':
      torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    with context:
      step()
    if device.type == 'cuda':
      torch.cuda.synchronize()
    times.append((time.perf_counter() - start, time.process_time() - start_cpu))
  times = sorted(times[1:])
  return times[len(times) // 2]


def score_step(device, batch):
  config = config_on(SCORE_CONFIG, device)
  sde, _ = sde_lib.get_sde(config)
  model = mutils.create_model(config)
  state = dict(model=model, optimizer=losses.get_optimizer(config, model.parameters()),
               ema=ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate), step=0)
  step_fn = losses.get_step_fn(sde, True, losses.optimization_manager(config), reduce_mean=False, continuous=True,
                               likelihood_weighting=False)
  x = torch.rand(batch, 3, 32, 32, device=device)
  return lambda: step_fn(state, x)


def classifier_step(device, batch):
  config = config_on(CLASSIFIER_CONFIG, device)
  sde, eps = sde_lib.get_sde(config)
  score_model = mutils.create_model(config).eval().requires_grad_(False)
  classifier = mutils.create_classifier(config)
  state = dict(model=classifier, score_model=score_model, step=0,
               optimizer=losses.get_optimizer(config, classifier.parameters()))
  step_fn = losses.get_classifier_step_fn(losses.TotalObjective(sde, eps), losses.optimization_manager(config))
  x = torch.rand(batch, 3, 32, 32, device=device)
  labels = torch.randint(0, 10, (batch,), device=device)
  return lambda: step_fn(state, x, labels)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=2, help='timed steps after one warm-up step')
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: the default)')
  parser.add_argument('--only', choices=['score', 'classifier'], default=None)
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  device = torch.device(args.device)
  torch.manual_seed(0)
  precisions = ['float32', 'tf32', 'bf16 autocast'] if device.type == 'cuda' else ['float32']
  rows = []
  for name, build in (("classifier 'total' step", classifier_step), ('score step', score_step)):
    if args.only and not name.startswith(args.only):
      continue
    step = build(device, args.batch)
    for precision in precisions:
      rows.append((name, precision, seconds_per_step(step, device, args.steps, precision)))
    del step
  print(f'\nTraining step time, full CIFAR-10 configs, batch {args.batch}, device {device}, '
        f'{torch.get_num_threads()} threads')
  header = ('step', 'precision', 's / step', 'CPU s / step', 'original (2-core CPU)')
  print(f'| {header[0]:<24} | {header[1]:<13} | {header[2]:>8} | {header[3]:>12} | {header[4]:>21} |')
  print(f'|{"-" * 26}|{"-" * 15}|{"-" * 10}|{"-" * 14}|{"-" * 23}|')
  for name, precision, (seconds, cpu_seconds) in rows:
    print(f'| {name:<24} | {precision:<13} | {seconds:8.3f} | {cpu_seconds:12.3f} | '
          f'{ORIGINAL_CPU_SECONDS[name]:21.1f} |')


if __name__ == '__main__':
  main()
