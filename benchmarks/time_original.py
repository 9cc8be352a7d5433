"""Seconds per guided PC step of the original code, run from its own source (for bench_sample_cost.py --original).

  PYTHONPATH=<original>:<original>/stubs python benchmarks/time_original.py --batch 8 [--device cpu]

<original> is an export of the authors' repository (chen-hao-chao/dlsm) made to run on a CPU with four local
changes: the two CUDA-extension `load(...)` calls under op/ set to None (their CPU paths use native routines), the
four in-place `out += temb_i` of models/resnet_cond.py made out of place, a stand-in `tensorflow` package in
<original>/stubs exposing only `io.gfile`, and the inverse scaler written inline here instead of importing its
datasets.py (which needs jax and tensorflow-datasets). Nothing of the original is part of this project.

It builds the original's NCSN++ and resnet18_cond from its CIFAR-10 evaluation config (random weights: the time
does not depend on them), samples through the original's own `sampling.get_sampling_fn` with N = 2 and N = 5 PC
steps, and prints one JSON line: {"seconds_per_step": (t(5) − t(2)) / 3, ...}; one step is two guided network
evaluations (reverse-diffusion predictor + Langevin corrector).
"""
import argparse
import importlib.util
import json
import os
import time

import torch


def original_config(device):
  """The original's eval_cifar10_configs.py (found on sys.path), on `device`."""
  import sampling  # the original's module: its folder is on PYTHONPATH
  root = os.path.dirname(os.path.abspath(sampling.__file__))
  spec = importlib.util.spec_from_file_location('original_eval_config',
                                                os.path.join(root, 'configs/eval/cifar10/eval_cifar10_configs.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.device = torch.device(device)
  return config


def seconds_for(config, steps, networks, batch):
  import sampling
  import sde_lib
  config.model.num_scales = steps
  sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, N=steps)
  shape = (batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  sampling_fn = sampling.get_sampling_fn(config, sde, shape, lambda x: (x + 1.) / 2., 1e-5)
  labels = torch.arange(batch, device=config.device) % config.classifier.classes
  start = time.perf_counter()
  sampling_fn(*networks, labels)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--rounds', type=int, default=2, help='timed (N = 2, N = 5) pairs; the fastest of each counts')
  args = parser.parse_args()
  from models import utils as mutils  # the original's
  from models import classifier, ncsnpp  # noqa: F401  (registers the networks)
  config = original_config(args.device)
  config.sampling.conditional = True
  torch.manual_seed(0)
  networks = (mutils.create_model(config).eval(), mutils.create_classifier(config).eval())
  times = {2: [], 5: []}
  seconds_for(config, 2, networks, args.batch)  # warm-up
  for _ in range(args.rounds):
    for steps in times:
      times[steps].append(seconds_for(config, steps, networks, args.batch))
  per_step = (min(times[5]) - min(times[2])) / 3
  print(json.dumps(dict(seconds_per_step=per_step, seconds_per_evaluation=per_step / 2, batch=args.batch,
                        threads=torch.get_num_threads(), torch=torch.__version__)))


if __name__ == '__main__':
  main()
