"""Where the time of one guided evaluation goes, on the CIFAR-10 networks (NCSN++ and resnet18_cond, channels_last).

  python benchmarks/profile_guided_step.py [--batch 8] [--modes fp32 bf16 bf16+compile "bf16 all+compile"]

Per mode: seconds of the score network's forward, of the classifier's forward and input-gradient, and of the whole
guided evaluation D(x, σ) (the rest is the update arithmetic), the fastest of --rounds; then, per mode, the
score forward's operators (torch.profiler, self CPU time) grouped as convolution, normalisation, attention,
element-wise, layout and dtype conversions, and the rest. Also the machine's fp32 and bf16 3×3-convolution peaks
(bench_sampling.conv_peak), so the fraction of the bf16 peak a mode reaches can be read off.
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sampling  # noqa: E402
import sde_lib  # noqa: E402
from bench_sample_cost import MODES, networks_of  # noqa: E402
from bench_sampling import EVAL_CONFIG, best_time, conv_peak, load_config  # noqa: E402

CPU = torch.device('cpu')
GROUPS = (  # (group, substrings of operator names), first match wins
    ('convolution', ('conv', 'mkldnn_convolution')),
    ('normalisation', ('group_norm', 'native_group_norm', 'batch_norm', 'layer_norm')),
    ('attention', ('bmm', 'softmax', 'scaled_dot_product', 'einsum', 'matmul', 'addmm', 'linear')),
    ('layout / dtype copies', ('copy_', '_to_copy', 'to', 'contiguous', 'clone', 'permute', 'reshape', 'view')),
    ('element-wise', ('add', 'mul', 'silu', 'sigmoid', 'div', 'sub', 'cat', 'pad', 'upfirdn', 'avg_pool', 'exp',
                      'sin', 'cos', 'neg', 'rsqrt', 'sqrt')),
)


def pieces(mode, sde, networks, x, labels, rounds):
  """{piece: seconds} of one guided evaluation in `mode` at σ = 1."""
  dtype, classifier_dtype, compile_, _ = MODES[mode]
  settings = sampling.NetworkSettings(dtype=getattr(torch, dtype), classifier_dtype=getattr(torch, classifier_dtype),
                                      compile=compile_)
  score_fn = sampling.as_score_fn(sde, networks[0], True, settings.dtype, compile_)
  classifier_fn = sampling.as_classifier_fn(sde, networks[1], True, compile_, settings.classifier_dtype)
  denoiser = sampling.build_denoiser(sde, *networks, labels, sampling.Guidance(1.), settings)
  t = sde.time_of_sigma(torch.tensor(1.)).repeat(len(x))
  with torch.no_grad(), sampling._FrozenParameters(*networks):
    return {'score forward': best_time(lambda: score_fn(x, t), CPU, rounds),
            'classifier forward + input-gradient':
                best_time(lambda: sampling.log_prob_grad(classifier_fn, x, t, labels), CPU, rounds),
            'guided evaluation': best_time(lambda: denoiser(x, 1.), CPU, rounds)}, score_fn, t


def operator_groups(score_fn, x, t):
  """{group: self CPU seconds} of one score forward."""
  with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
    score_fn(x, t)
  totals = {}
  for event in prof.key_averages():
    name = event.key.lower()
    group = next((g for g, keys in GROUPS if any(k in name for k in keys)), 'other')
    totals[group] = totals.get(group, 0.) + event.self_cpu_time_total / 1e6
  return totals


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--modes', nargs='+', default=['fp32', 'bf16', 'bf16+compile', 'bf16 all+compile'],
                      choices=[m for m in MODES if m != 'tf32'])
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  config = load_config(EVAL_CONFIG)
  config.device = 'cpu'
  networks = networks_of(config, quick=False)
  sde, _ = sde_lib.get_sde(config)
  labels = torch.arange(args.batch) % config.classifier.classes
  x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
  fp32_rate, bf16_rate = (conv_peak(CPU, args.rounds, dtype) for dtype in (torch.float32, torch.bfloat16))
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; 3x3 convolution '
        f'peaks at the network\'s shapes: fp32 {fp32_rate:.0f} GFLOP/s, bf16 {bf16_rate:.0f} GFLOP/s', flush=True)
  reference, profiles = None, {}
  for mode in args.modes:
    times, score_fn, t = pieces(mode, sde, networks, x, labels, args.rounds)
    reference = reference or times['guided evaluation']
    rest = times['guided evaluation'] - times['score forward'] - times['classifier forward + input-gradient']
    print(f'{mode:<18}' + ' | '.join(f'{k} {v:.3f} s' for k, v in times.items())
          + f' | rest {rest:.3f} s | {times["guided evaluation"] / reference:.2f} of {args.modes[0]}', flush=True)
    profiles[mode] = operator_groups(score_fn, x, t)
  for mode, totals in profiles.items():
    total = sum(totals.values())
    print(f'{mode:<18} score forward by operator (self CPU): ' + ', '.join(
        f'{g} {100 * s / total:.0f}%' for g, s in sorted(totals.items(), key=lambda kv: -kv[1])), flush=True)


if __name__ == '__main__':
  main()
