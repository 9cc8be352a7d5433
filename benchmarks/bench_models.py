"""Network speed on CPU: the full CIFAR-10 NCSN++ forward, the classifier's input-gradient (the guidance
term), and FIR resampling against the naive upfirdn2d formulation the original runs on CPU.

Prints one table (seconds, median of a few timed runs after a warm-up). Reference: the original code's
NCSN++ forward at batch 8 takes about 1.8 s on a 2-core machine of the kind used here.

  .venv/bin/python benchmarks/bench_models.py [--batch 8] [--repeats 5] [--threads N]
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models import layers  # noqa: E402
from models.utils import get_model  # noqa: E402
from tests.helpers import load_config  # noqa: E402

SCORE_CONFIG = 'configs/score/cifar10_score_configs.py'
CLASSIFIER_CONFIG = 'configs/classifier/cifar10_classifier_resnet18_cond_configs.py'
TAPS = (1, 3, 3, 1)


def median_seconds(fn, repeats):
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@contextlib.contextmanager
def naive_fir():
  """Route every FIR op of NCSN++ through the naive upfirdn2d, as the original does on CPU."""
  saved = layers.upsample_2d, layers.downsample_2d, layers.fir_filter

  def fir_filter(x, taps, pad0, pad1, gain=1.0, down=1):
    return layers.upfirdn2d_reference(x, taps, down=down, pad=(pad0, pad1), gain=gain)

  def downsample_2d(x, taps=TAPS, factor=2, gain=1.0):
    p = len(taps) - factor
    return layers.upfirdn2d_reference(x, taps, down=factor, pad=((p + 1) // 2, p // 2), gain=gain)

  def upsample_2d(x, taps=TAPS, factor=2, gain=1.0):
    p = len(taps) - factor
    return layers.upfirdn2d_reference(x, taps, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2),
                                      gain=gain * factor ** 2)

  layers.upsample_2d, layers.downsample_2d, layers.fir_filter = upsample_2d, downsample_2d, fir_filter
  try:
    yield
  finally:
    layers.upsample_2d, layers.downsample_2d, layers.fir_filter = saved


def ncsnpp_rows(batch, repeats):
  torch.manual_seed(0)
  model = get_model('ncsnpp')(load_config(SCORE_CONFIG)).eval()
  x, sigma = torch.rand(batch, 3, 32, 32), torch.logspace(-2, 1.7, batch)
  with torch.inference_mode():
    ours = median_seconds(lambda: model(x, sigma), repeats)
    with naive_fir():
      naive = median_seconds(lambda: model(x, sigma), repeats)
  return [(f'NCSN++ forward, no grad (batch {batch})', ours, naive)]


def classifier_rows(batch, repeats):
  torch.manual_seed(0)
  model = get_model('classifier')(load_config(CLASSIFIER_CONFIG))
  x, sigma = torch.rand(batch, 3, 32, 32), torch.logspace(-2, 1.7, batch)
  labels = torch.arange(batch) % 10

  def input_gradient():
    x_in = x.clone().requires_grad_(True)
    log_prob = torch.log(torch.softmax(model(x_in, sigma), dim=-1) + 1e-8)
    return torch.autograd.grad(log_prob[torch.arange(batch), labels].sum(), x_in)[0]

  rows = []
  for mode in ('eval', 'train'):
    model.train(mode == 'train')
    rows.append((f'resnet18_cond input-gradient, {mode} BN (batch {batch})', median_seconds(input_gradient, repeats),
                 None))
  return rows


def fir_rows(batch, repeats):
  """The FIR shapes of one NCSN++ forward: down-sampling in the down blocks, up-sampling in the up blocks."""
  rows = []
  with torch.inference_mode():
    for channels, size in ((128, 32), (256, 16), (256, 8)):
      x = torch.randn(batch, channels, size, size)
      rows.append((f'FIR down {channels}ch {size}->{size // 2}', median_seconds(lambda: layers.downsample_2d(x), repeats),
                   median_seconds(lambda: layers.upfirdn2d_reference(x, TAPS, down=2, pad=(1, 1)), repeats)))
    for channels, size in ((256, 4), (256, 8), (256, 16)):
      x = torch.randn(batch, channels, size, size)
      rows.append((f'FIR up {channels}ch {size}->{size * 2}', median_seconds(lambda: layers.upsample_2d(x), repeats),
                   median_seconds(lambda: layers.upfirdn2d_reference(x, TAPS, up=2, pad=(2, 1), gain=4), repeats)))
    conv = layers.FIRConv2d(128, 256, kernel=3, down=True)
    x = torch.randn(batch, 128, 16, 16)
    rows.append(('FIR conv-down (pyramid) 128->256ch 16->8', median_seconds(lambda: conv(x), repeats),
                 median_seconds(lambda: torch.nn.functional.conv2d(
                     layers.upfirdn2d_reference(x, TAPS, pad=(2, 2)), conv.weight, conv.bias, stride=2), repeats)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  rows = ncsnpp_rows(args.batch, args.repeats) + classifier_rows(args.batch, args.repeats)
  rows += fir_rows(args.batch, max(args.repeats, 20))
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, median of {args.repeats}+ runs')
  print(f'{"what":<52} {"ours (s)":>10} {"naive upfirdn (s)":>18} {"speed-up":>9}')
  for name, ours, naive in rows:
    naive_text = f'{naive:18.5f}' if naive is not None else f'{"-":>18}'
    ratio = f'{naive / ours:8.1f}x' if naive is not None else f'{"":>9}'
    print(f'{name:<52} {ours:10.5f} {naive_text} {ratio}')
  print('reference: original NCSN++ forward at batch 8 ~ 1.8 s on a 2-core machine of this kind')


if __name__ == '__main__':
  main()
