"""Guided sampling speed against the machine's limit, and whether the fast modes change the samples.

  python benchmarks/bench_sampling.py                  # CPU: full CIFAR-10 configs, batch 8, every mode
  python benchmarks/bench_sampling.py --quick          # smoke run: small networks, few steps
  python benchmarks/bench_sampling.py --device cuda    # GPU: batch 128, adds images/s per mode
  python benchmarks/bench_sampling.py --quality        # + the sample-quality experiment on a small trained model

Prints the machine's fp32 convolution and bf16 matrix-product peaks, then per mode the seconds per guided PC step
(Langevin corrector + reverse-diffusion predictor: 2 score evaluations + 2 classifier input-gradients), the achieved
GFLOP/s (counted once with FlopCounterMode), the fraction of the matching peak, the speed-up over the original's
formulation, and the errors of the score, the guidance gradient and the guided score against exact fp32. `original`
is the step written as the original code does it (networks as built, NCHW; a copy of x made a leaf; one-hot
cotangent; classifier parameters left requiring grad); `fp32` is this project's default. Timed runs of the modes
take turns and the fastest counts, so other load on the machine disturbs the comparison little. The quality experiment trains a small NCSN++ and classifier on synthetic 3-class images, samples them with
each mode and with several fp32 seeds, and prints the metrics next to the fp32 run-to-run spread; it also runs the
guided probability-flow ODE sampler and prints its number of network evaluations next to PC's.
"""
import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluation  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
import time_grids  # noqa: E402
from models import utils as mutils  # noqa: E402
from tests.helpers import load_config  # noqa: E402

EVAL_CONFIG = 'configs/eval/cifar10/eval_cifar10_configs.py'
MODES = {  # name: (dtype, torch.compile)
    'original': (torch.float32, False),
    'fp32': (torch.float32, False),
    'bf16': (torch.bfloat16, False),
    'fp32+compile': (torch.float32, True),
    'bf16+compile': (torch.bfloat16, True),
}


def synchronize(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def best_time(fn, device, repeats):
  """Minimum wall time of `repeats` calls after one warm-up call."""
  fn()
  synchronize(device)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    synchronize(device)
    times.append(time.perf_counter() - start)
  return min(times)


# ---------------------------------------------------------------------------------------------- peaks

def conv_peak(device, repeats=3, dtype=torch.float32):
  """Best GFLOP/s of 3x3 convolutions in `dtype` (channels_last, the layout the sampler uses) of NCSN++ trunk
  shapes."""
  best = 0.
  for batch, channels, size in ((8, 256, 16), (8, 128, 32), (32, 256, 16)):
    if device.type == 'cuda':
      batch *= 16
    x, w = (torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            for shape in ((batch, channels, size, size), (channels, channels, 3, 3)))
    flops = 2 * batch * channels * channels * 9 * size * size
    with torch.no_grad():
      best = max(best, flops / best_time(lambda: F.conv2d(x, w, padding=1), device, repeats) / 1e9)
  return best


def bf16_matmul_peak(device, repeats=3):
  """Best bf16 GFLOP/s of square matrix products."""
  best = 0.
  for n in ((4096, 8192) if device.type == 'cuda' else (1024, 2048)):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = max(best, 2 * n ** 3 / best_time(lambda: a @ b, device, repeats) / 1e9)
  return best


# ---------------------------------------------------------------------------------------------- networks

def bench_config(quick, device):
  config = load_config(EVAL_CONFIG)
  config.device = str(device)
  if quick:  # the golden files' small variants
    config.model.nf, config.model.num_res_blocks = 16, 1
    config.classifier.nf, config.classifier.resnet_base_width = 8, 8
  return config


def activate(model, seed):
  """Random weights with no zero-initialised layer (init_scale = 0 leaves some outputs at zero)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      if param.requires_grad and not param.any():
        noise = torch.randn(param.shape, generator=generator) * 0.02
        param.copy_(noise.to(param.device))
  return model.eval()


def original_guided_score(sde, score_model, classifier, labels, scale, num_classes):
  """The guided score as the original code computes it (the baseline of the table)."""
  score_fn = mutils.get_score_fn(sde, score_model, train=False, continuous=True)
  classifier_fn = mutils.get_classifier_fn(sde, classifier, train=False, continuous=True)
  one_hot = F.one_hot(labels, num_classes).float()

  def guided(x, t):
    score = score_fn(x, t)
    with torch.enable_grad():
      x_para = x.clone().detach().requires_grad_(True)
      log_prob = torch.log(F.softmax(classifier_fn(x_para, t), dim=-1) + 1e-8)
      grad = torch.autograd.grad(log_prob, x_para, grad_outputs=one_hot)[0]
    return score + scale * grad
  return guided


def make_sampler(mode, sde, shape, device, scale):
  """The PC sampler of `mode` over sde.N steps (guided: reverse diffusion + Langevin, as the configs):
  fn(score model, classifier, labels) -> (samples, nfe)."""
  dtype, compile_ = MODES[mode]
  times = time_grids.time_grid('linear', sde, sde.N, 1e-5)

  def sampler(score_model, classifier, labels):
    denoiser = sampling.build_denoiser(sde, score_model, classifier, labels, sampling.Guidance(scale),
                                       sampling.NetworkSettings(dtype=dtype, compile=compile_))
    with torch.no_grad(), sampling._FrozenParameters(score_model, classifier):
      return sampling.sample_pc(denoiser, sde.prior_sampling(shape).to(device), times), denoiser.nfe
  return sampler


def sampler_call(mode, sde, score_model, classifier, labels, scale):
  """The sampler's arguments: the networks, or for `original` its own guided score as a callable."""
  if mode == 'original':
    return (original_guided_score(sde, score_model, classifier, labels, scale, classifier_classes(classifier)),
            None, None)
  return score_model, classifier, labels


def classifier_classes(classifier):
  return [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def mode_fns(mode, sde, score_model, classifier, device):
  """(score_fn, classifier_fn) as the sampler of `mode` evaluates them ('original': plain fp32 wrappers)."""
  if mode == 'original':
    return (mutils.get_score_fn(sde, score_model, train=False, continuous=True),
            mutils.get_classifier_fn(sde, classifier, train=False, continuous=True))
  dtype, compile_ = MODES[mode]
  return (sampling.as_score_fn(sde, score_model, True, dtype, compile_),
          sampling.as_classifier_fn(sde, classifier, True, compile_))


def score_errors(modes, sde, score_model, classifier, labels, scale, shape, device):
  """{mode: (score error, guidance-gradient error, guided-score error)} against exact fp32, each the largest
  ‖Δ‖₂ / ‖reference‖₂ over t = 1, 0.5, 0.05, 1e-3 (x drawn from the VE marginal of uniform noise images)."""
  generator = torch.Generator().manual_seed(1)
  points = []
  for t_value in (1.0, 0.5, 0.05, 1e-3):
    t = torch.full((shape[0],), t_value, device=device)
    sigma = sde.marginal_prob(torch.zeros(1), torch.tensor([t_value]))[1].item()
    x = (torch.rand(shape, generator=generator) + sigma * torch.randn(shape, generator=generator)).to(device)
    points.append((x, t))

  def parts(mode):
    score_fn, classifier_fn = mode_fns(mode, sde, score_model, classifier, device)
    with torch.no_grad(), sampling._FrozenParameters(score_model, classifier):
      return [(score_fn(x, t), scale * sampling.log_prob_grad(classifier_fn, x, t, labels)) for x, t in points]

  tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
  mutils.use_exact_float32()  # the reference is true fp32 (CUDA convolutions default to TF32)
  reference = parts('fp32')
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32

  def relative(a, b):
    return ((a - b).norm() / b.norm()).item()
  errors = {}
  for mode in modes:
    found = parts(mode)
    errors[mode] = tuple(max(relative(pick(*mine), pick(*ref)) for mine, ref in zip(found, reference))
                         for pick in (lambda s, g: s, lambda s, g: g, lambda s, g: s + g))
  return errors


def step_flops(sde, score_model, classifier, labels, shape, device):
  """FLOPs of one guided PC step: twice (score forward + classifier forward and input-gradient), counted
  with FlopCounterMode (its module hooks do not support autograd.grad, hence backward(inputs=...))."""
  score_fn = mutils.get_score_fn(sde, score_model, train=False, continuous=True)
  classifier_fn = mutils.get_classifier_fn(sde, classifier, train=False, continuous=True)
  x, t = torch.randn(shape, device=device), torch.full((shape[0],), 0.5, device=device)
  with sampling._FrozenParameters(score_model, classifier), FlopCounterMode(display=False) as counter:
    with torch.no_grad():
      score_fn(x, t)
    x_in = x.clone().requires_grad_(True)
    log_prob = torch.log_softmax(classifier_fn(x_in, t), dim=-1)
    log_prob.gather(1, labels[:, None]).sum().backward(inputs=[x_in])
  return 2 * counter.get_total_flops()


def time_modes(modes, sde, models, labels, shape, device, steps, rounds):
  """{mode: (seconds per PC step, warm-up seconds)}. Each sampler runs once to warm up (compilation, oneDNN
  primitives), then the modes take turns for `rounds` timed runs and the fastest run counts, which keeps the
  comparison fair when other processes load the machine."""
  short = sde_lib.VESDE(sde.sigma_min, sde.sigma_max, N=steps)
  runs, warmups = {}, {}
  for mode in modes:
    score_model, classifier = models['original' if mode == 'original' else 'project']
    sampler = make_sampler(mode, short, shape, device, 1.0)
    args = sampler_call(mode, short, score_model, classifier, labels, 1.0)
    runs[mode] = lambda sampler=sampler, args=args: sampler(*args)
    start = time.perf_counter()
    runs[mode]()
    synchronize(device)
    warmups[mode] = time.perf_counter() - start
  times = {mode: [] for mode in modes}
  for _ in range(rounds):
    for mode in modes:
      start = time.perf_counter()
      runs[mode]()
      synchronize(device)
      times[mode].append(time.perf_counter() - start)
  return {mode: (min(times[mode]) / steps, warmups[mode]) for mode in modes}


def speed_table(args, device):
  config = bench_config(args.quick, device)
  torch.manual_seed(0)
  score_model = activate(mutils.create_model(config), 0)
  classifier = activate(mutils.create_classifier(config), 1)
  # The original ran the networks as built (NCHW); run_lib_sampling converts its networks to channels_last.
  models = {'original': (copy.deepcopy(score_model), copy.deepcopy(classifier)),
            'project': mutils.to_channels_last(score_model, classifier)}
  sde, _ = sde_lib.get_sde(config)
  batch = args.batch or (128 if device.type == 'cuda' else 8)
  shape = (batch, 3, 32, 32)
  labels = torch.arange(batch, device=device) % config.classifier.classes
  flops = step_flops(sde, *models['original'], labels, shape, device)  # NCHW: SDPA's flash kernel is not counted
  timings = time_modes(args.modes, sde, models, labels, shape, device, args.steps, args.rounds)
  errors = score_errors(args.modes, sde, score_model, classifier, labels, 1.0, shape, device)
  size = 'small (nf 16, 1 res block)' if args.quick else 'full CIFAR-10 configs'
  print(f'\nGuided PC step, {size}, batch {batch}: {flops / 1e9:.1f} GFLOP per step '
        f'(2 score forwards + 2 classifier input-gradients); best of {args.rounds} runs of {args.steps} steps')
  print('errors: relative L2 against exact fp32 of the score, of the guidance gradient and of the guided score '
        '(worst of t = 1, 0.5, 0.05, 1e-3; random weights)')
  header = (f'{"mode":<14}{"s/step":>9}{"GFLOP/s":>9}{"% peak":>8}{"vs orig":>8}{"warm-up s":>10}'
            f'{"score err":>10}{"grad err":>10}{"guided err":>11}')
  if device.type == 'cuda':
    header += f'{"img/s (1000-step PC)":>22}'
  print(header)
  baseline = timings['original' if 'original' in timings else args.modes[0]][0]
  for mode in args.modes:
    seconds, warmup = timings[mode]
    peak = args.peaks['bf16'] if MODES[mode][0] == torch.bfloat16 else args.peaks['fp32']
    rate = flops / seconds / 1e9
    line = (f'{mode:<14}{seconds:>9.3f}{rate:>9.0f}{100 * rate / peak:>7.0f}%{baseline / seconds:>7.2f}x'
            f'{warmup:>10.1f}{errors[mode][0]:>10.1e}{errors[mode][1]:>10.1e}{errors[mode][2]:>11.1e}')
    if device.type == 'cuda':
      line += f'{batch / (1000 * seconds):>22.1f}'
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------- quality

CLASS_COLOURS = torch.tensor([[0.9, 0.25, 0.2], [0.2, 0.85, 0.3], [0.25, 0.3, 0.9]])


def synthetic_images(n, generator):
  """3 classes of 32x32 RGB images: 1-3 soft blobs of the class colour on a dim textured background."""
  labels = torch.arange(n) % 3
  grid = torch.stack(torch.meshgrid(torch.arange(32.), torch.arange(32.), indexing='ij'))
  images = 0.1 + 0.05 * torch.rand(n, 3, 32, 32, generator=generator)
  for _ in range(3):
    present = (torch.rand(n, generator=generator) < 0.7).float()
    centre = 6 + 20 * torch.rand(n, 2, 1, 1, generator=generator)
    radius = 3 + 4 * torch.rand(n, 1, 1, generator=generator)
    blob = torch.exp(-((grid[None] - centre) ** 2).sum(1) / (2 * radius ** 2)) * present[:, None, None]
    images = images + blob[:, None] * CLASS_COLOURS[labels][:, :, None, None]
  return images.clamp(0, 1), labels


def pooled_features(images):
  return F.avg_pool2d(images, 4).reshape(images.shape[0], -1).double().numpy()


def quality_metrics(samples, labels, data):
  """Colour-oracle accuracy (dominant channel of the bright pixels), per-class Fréchet distance of 8x8 pooled
  pixels to the data, mean pixel value."""
  samples = samples.clamp(0, 1).cpu()
  labels = labels.cpu()
  weight = (samples.max(1, keepdim=True).values > 0.3).float()
  dominant = (samples * weight).sum((2, 3)).argmax(1)
  accuracy = (dominant == labels).float().mean().item()
  data_images, data_labels = data
  fd = np.mean([evaluation.frechet_distance(pooled_features(data_images[data_labels == c]),
                                            pooled_features(samples[labels == c])) for c in range(3)])
  return accuracy, fd, samples.mean().item()


def oracle_accuracy(data):
  return quality_metrics(data[0][:600], data[1][:600], data)[0]


def noisy_classifier_accuracy(sde, classifier, data, device):
  classifier_fn = mutils.get_classifier_fn(sde, classifier, train=False, continuous=True)
  images, labels = data[0][:600].to(device), data[1][:600].to(device)
  correct = []
  for t_value in (1e-5, 0.3, 0.6):
    t = torch.full((images.shape[0],), t_value, device=device)
    noisy = images + sde.marginal_prob(images, t)[1][:, None, None, None] * torch.randn_like(images)
    with torch.no_grad():
      correct.append((classifier_fn(noisy, t).argmax(1) == labels).float().mean().item())
  return float(np.mean(correct))


def small_training_config(device):
  config = load_config(EVAL_CONFIG)
  config.device = str(device)
  config.model.nf, config.model.num_res_blocks, config.model.ch_mult = 16, 1, (1, 2, 2)
  config.model.dropout = 0.
  config.classifier.nf, config.classifier.resnet_base_width, config.classifier.classes = 8, 8, 3
  return config


def train_small_models(config, sde, data, steps, batch, device):
  import losses
  torch.manual_seed(0)
  score_model, classifier = mutils.create_model(config), mutils.create_classifier(config)
  score_loss = losses.get_sde_loss_fn(sde, True, reduce_mean=False, continuous=True, likelihood_weighting=False)
  classifier_loss = losses.CrossEntropyObjective(sde, eps=1e-5)
  images, labels = data
  for model, loss_of in ((score_model, lambda b, y: score_loss(score_model, b)),
                         (classifier, lambda b, y: classifier_loss(classifier, score_model, b, y))):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
      index = torch.randint(0, images.shape[0], (batch,))
      loss = loss_of(images[index].to(device), labels[index].to(device))
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
  return score_model.eval(), classifier.eval()


def quality_experiment(args, device):
  generator = torch.Generator().manual_seed(0)
  data = synthetic_images(3000, generator)
  config = small_training_config(device)
  sde, eps = sde_lib.get_sde(config)
  start = time.perf_counter()
  score_model, classifier = mutils.to_channels_last(
      *train_small_models(config, sde, data, args.train_steps, 32, device))
  print(f'\nQuality experiment: small NCSN++ (nf 16, ch_mult (1,2,2)) and resnet18_cond (width 8) trained '
        f'{args.train_steps} steps each on synthetic 3-class images ({time.perf_counter() - start:.0f} s); '
        f'{args.sample_steps}-step guided PC (scale {args.scale}), {args.quality_batch} samples per run.\n'
        f'Reference: the colour oracle labels {oracle_accuracy(data):.3f} of the data correctly; the classifier '
        f'{noisy_classifier_accuracy(sde, classifier, data, device):.3f} at t = 1e-5, 0.3, 0.6 (mean).')
  short = sde_lib.VESDE(sde.sigma_min, sde.sigma_max, N=args.sample_steps)
  shape = (args.quality_batch, 3, 32, 32)
  labels = torch.arange(shape[0], device=device) % 3
  modes = ['fp32'] + [m for m in args.quality_modes if m != 'fp32']
  errors = score_errors(modes, sde, score_model, classifier, labels, args.scale, shape, device)
  print(f'{"mode":<14}{"seed":>5}{"oracle acc":>11}{"class FD":>10}{"mean px":>9}{"score err":>10}'
        f'{"grad err":>10}{"guided err":>11}')
  runs = [('fp32', seed) for seed in range(args.seeds)] + [(m, 0) for m in modes if m != 'fp32']
  for mode, seed in runs:
    sampler = make_sampler(mode, short, shape, device, args.scale)
    torch.manual_seed(seed)
    samples, _ = sampler(score_model, classifier, labels)
    accuracy, fd, mean = quality_metrics(samples, labels, data)
    print(f'{mode:<14}{seed:>5}{accuracy:>11.3f}{fd:>10.3f}{mean:>9.4f}{errors[mode][0]:>10.1e}'
          f'{errors[mode][1]:>10.1e}{errors[mode][2]:>11.1e}', flush=True)
  ode_comparison(args, (sde, short, eps), (score_model, classifier), labels, shape, data)


def ode_comparison(args, sdes, models, labels, shape, data):
  """The guided probability-flow ODE on sde (sdes: the SDE, the short one of the PC runs, eps) against PC."""
  sde, short, eps = sdes
  denoiser = sampling.build_denoiser(sde, *models, labels, sampling.Guidance(args.scale))
  torch.manual_seed(0)
  start = time.perf_counter()
  with torch.no_grad(), sampling._FrozenParameters(*models):
    samples = sampling.sample_ode(denoiser, sde.prior_sampling(shape).to(labels.device), eps, args.ode_tol,
                                  args.ode_tol, denoise=True)
  seconds, nfe = time.perf_counter() - start, denoiser.nfe
  accuracy, fd, _ = quality_metrics(samples, labels, data)
  print(f'Probability-flow ODE (RK45, rtol = atol = {args.ode_tol:g}, guided): nfe {nfe} (with the denoising step) vs PC '
        f'{2 * sde.N} at N = {sde.N} ({2 * short.N} in the runs above); {seconds:.1f} s; oracle acc '
        f'{accuracy:.3f}, class FD {fd:.3f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--quick', action='store_true', help='small networks and few steps (smoke run)')
  parser.add_argument('--batch', type=int, default=None, help='default 8 on CPU, 128 on CUDA')
  parser.add_argument('--steps', type=int, default=None, help='PC steps per timed run (default 2)')
  parser.add_argument('--rounds', type=int, default=None, help='timed runs per mode, best kept (default 4)')
  parser.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
  parser.add_argument('--quality', action='store_true', help='run the sample-quality experiment')
  parser.add_argument('--quality_modes', nargs='+', default=['bf16'],
                      choices=[m for m in MODES if m != 'original'], help='quality: modes compared with fp32')
  parser.add_argument('--train_steps', type=int, default=None, help='quality: steps per model (default 800)')
  parser.add_argument('--sample_steps', type=int, default=None, help='quality: PC steps (default 200)')
  parser.add_argument('--quality_batch', type=int, default=None, help='quality: samples per run (default 96)')
  parser.add_argument('--seeds', type=int, default=3, help='quality: fp32 runs for the run-to-run spread')
  parser.add_argument('--scale', type=float, default=4.0, help='quality: guidance scale (default 4)')
  parser.add_argument('--ode_tol', type=float, default=None, help='quality: ODE rtol = atol (default 1e-5)')
  args = parser.parse_args()
  args.steps = args.steps or 2  # a grid has at least 2 points
  args.rounds = args.rounds or (2 if args.quick else 4)
  args.train_steps = args.train_steps or (30 if args.quick else 800)
  args.sample_steps = args.sample_steps or (20 if args.quick else 200)
  args.quality_batch = args.quality_batch or (24 if args.quick else 96)
  args.ode_tol = args.ode_tol or (1e-3 if args.quick else 1e-5)
  device = torch.device(args.device)
  print(f'torch {torch.__version__}, device {device}'
        + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
           f', {torch.get_num_threads()} threads'))
  args.peaks = {'fp32': conv_peak(device), 'bf16': bf16_matmul_peak(device)}
  print(f'Peaks: fp32 3x3 convolution {args.peaks["fp32"]:.0f} GFLOP/s, bf16 matrix product '
        f'{args.peaks["bf16"]:.0f} GFLOP/s ("% peak" uses the one matching the mode)')
  speed_table(args, device)
  if args.quality:
    quality_experiment(args, device)


if __name__ == '__main__':
  main()
