"""The cost of one guided CIFAR-10 sample: network evaluations × seconds per evaluation, per mode and sampler.

  python benchmarks/bench_sample_cost.py                         # CPU: batch 8, fp32 / bf16 / bf16 + compile
  python benchmarks/bench_sample_cost.py --original ref          # + the original's guided PC, from its own code
  python benchmarks/bench_sample_cost.py --device cuda           # GPU: batch 128, adds TF32, prints images/s

The networks are those of configs/eval/cifar10/eval_cifar10_configs.py (NCSN++ and resnet18_cond, random weights:
the time does not depend on them), channels_last as run_lib_sampling.py runs them. Each sampler (`--samplers
SPEC@NFE`, SPEC as in bench_sampler_nfe.py, NFE the evaluations at which it matched guided PC on digits) is built
through sampling.get_sampling_fn at two short step counts, and one evaluation costs (t(long) − t(short)) /
(NFE(long) − NFE(short)), so start-up and the last step cancel; the fastest of --rounds runs counts, the modes
taking turns. A guided evaluation is one score-network forward plus the classifier's forward and input-gradient.
The original (--original DIR: an export of the authors' code prepared as benchmarks/time_original.py says) is
timed the same way, (t(5) − t(2)) / 3 per PC step of two evaluations, in a fresh process between the project's
rounds. Prints one row per (sampler, mode) as it is measured and writes <out>/bench_sample_cost.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sampling  # noqa: E402
import sde_lib  # noqa: E402
from bench_sampler_nfe import sampler_config  # noqa: E402
from bench_sampling import EVAL_CONFIG, activate, load_config, synchronize  # noqa: E402
from models import utils as mutils  # noqa: E402

MODES = {  # name: (sampling.dtype, sampling.classifier_dtype, sampling.compile, TF32 allowed)
    'fp32': ('float32', 'float32', False, False),
    'tf32': ('float32', 'float32', False, True),
    'bf16': ('bfloat16', 'float32', False, False),
    'bf16+compile': ('bfloat16', 'float32', True, False),
    'bf16 all': ('bfloat16', 'bfloat16', False, False),
    'bf16 all+compile': ('bfloat16', 'bfloat16', True, False),
}
CPU_MODES = ['fp32', 'bf16', 'bf16+compile', 'bf16 all+compile']
CUDA_MODES = ['fp32', 'tf32', 'bf16', 'bf16+compile', 'bf16 all+compile']
SHORT_STEPS = {'pc': (2, 5)}  # grid points of the two timed runs; other samplers: DEFAULT_STEPS
DEFAULT_STEPS = (3, 9)


def mode_config(base, spec, steps, mode):
  config = sampler_config(base, spec, steps)
  s = config.sampling
  s.dtype, s.classifier_dtype, s.compile, _ = MODES[mode]
  return config


def run_seconds(config, sde, networks, labels):
  """(seconds, NFE) of one guided run of config's sampler on a batch of len(labels)."""
  shape = (len(labels), config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler = sampling.get_sampling_fn(config, sde, shape, lambda x: x, 1e-5)
  device = labels.device
  synchronize(device)
  start = time.perf_counter()
  _, nfe = sampler(*networks, labels)
  synchronize(device)
  return time.perf_counter() - start, nfe


def seconds_per_evaluation(base, spec, mode, sde, networks, labels, rounds):
  """Seconds of one guided evaluation of `spec` in `mode` (see the module doc), after a warm-up run."""
  mutils.use_exact_float32(not MODES[mode][3])
  short, long = SHORT_STEPS.get(spec.split(':')[0], DEFAULT_STEPS)
  configs = [mode_config(base, spec, steps, mode) for steps in (short, long)]
  run_seconds(configs[0], sde, networks, labels)  # compilation, oneDNN primitives
  best = [min(run_seconds(config, sde, networks, labels) for _ in range(rounds)) for config in configs]
  (t_short, nfe_short), (t_long, nfe_long) = best
  return (t_long - t_short) / (nfe_long - nfe_short)


def original_seconds_per_evaluation(folder, batch, device):
  """The original's seconds per guided evaluation, from benchmarks/time_original.py in a fresh process."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'time_original.py')
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, os.path.join(folder, 'stubs')]))
  result = subprocess.run([sys.executable, script, '--batch', str(batch), '--device', device], env=environment,
                          capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'bench_sample_cost.py: error: the original in {folder} failed: {result.stderr.strip().splitlines()[-1]}')
  return json.loads(result.stdout.strip().splitlines()[-1])['seconds_per_evaluation']


def cost_row(sampler, mode, nfe, seconds, batch, original_sample=None):
  per_sample = nfe * seconds / batch
  return dict(sampler=sampler, mode=mode, nfe=nfe, seconds_per_evaluation=seconds, seconds_per_sample=per_sample,
              images_per_second=1 / per_sample,
              vs_original=None if original_sample is None else original_sample / per_sample)


def print_row(row):
  ratio = '' if row['vs_original'] is None else f' | {row["vs_original"]:.1f}× cheaper than the original'
  print(f'{row["sampler"]:<22} NFE {row["nfe"]:>5} | {row["mode"]:<16} | {row["seconds_per_evaluation"]:.4f} s/eval | '
        f'{row["seconds_per_sample"]:.3f} s/sample | {row["images_per_second"]:.2f} images/s{ratio}', flush=True)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--batch', type=int, help='samples per run (default 8 on CPU, 128 on CUDA)')
  parser.add_argument('--samplers', nargs='+', default=['pc@2000', 'dpmpp_2m:eta=10@100', 'dpmpp_2m:eta=10@20'],
                      help='SPEC@NFE: a sampler and the evaluations at which it matched guided PC at 2 000 on digits')
  parser.add_argument('--modes', nargs='+', choices=list(MODES), help='default: the device\'s modes')
  parser.add_argument('--rounds', type=int, default=2, help='timed runs per step count; the fastest counts')
  parser.add_argument('--original', help='folder of the original code prepared for CPU (benchmarks/time_original.py)')
  parser.add_argument('--quick', action='store_true', help='small networks (a smoke run; the numbers mean nothing)')
  parser.add_argument('--out', default='results/bench_sample_cost')
  return parser.parse_args(argv)


def networks_of(config, quick):
  if quick:
    config.model.nf, config.model.num_res_blocks = 16, 1
    config.classifier.nf, config.classifier.resnet_base_width = 8, 8
  torch.manual_seed(0)
  networks = activate(mutils.create_model(config), 0), activate(mutils.create_classifier(config), 1)
  return mutils.to_channels_last(*networks)


def main(argv=None):
  args = parse_args(argv)
  device = torch.device(args.device)
  batch = args.batch or (128 if device.type == 'cuda' else 8)
  modes = args.modes or (CUDA_MODES if device.type == 'cuda' else CPU_MODES)
  base = load_config(EVAL_CONFIG)
  base.device, base.sampling.conditional = str(device), True
  networks = networks_of(base, args.quick)
  sde, _ = sde_lib.get_sde(base)
  labels = torch.arange(batch, device=device) % base.classifier.classes
  where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
  print(f'torch {torch.__version__}, {device} ({where}), batch {batch}', flush=True)
  rows, original_sample = [], None
  if args.original:
    seconds = original_seconds_per_evaluation(args.original, batch, args.device)
    original_sample = 2000 * seconds / batch
    rows.append(cost_row('pc (the original)', 'fp32', 2000, seconds, batch, original_sample))
    print_row(rows[-1])
  for spec_at_nfe in args.samplers:
    spec, nfe = spec_at_nfe.rsplit('@', 1)
    for mode in modes:
      seconds = seconds_per_evaluation(base, spec, mode, sde, networks, labels, args.rounds)
      rows.append(cost_row(spec, mode, int(nfe), seconds, batch, original_sample))
      print_row(rows[-1])
  mutils.use_exact_float32()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'bench_sample_cost.json'), 'w') as file:
    json.dump(dict(rows=rows, device=str(device), where=where, batch=batch, torch=torch.__version__,
                   args=vars(args)), file, indent=1)


if __name__ == '__main__':
  main()
