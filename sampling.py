"""Classifier-guided samplers for score-based models: predictor–corrector loops, the adaptive loop, the
probability-flow ODE.

The guided score  ŝ(x, t) = s(x, t) + λ·∇x log(softmax(f(x, t)) + 1e-8)[y]  is written once
(`get_guided_score_fn`); every predictor, corrector, the adaptive sampler and the probability-flow ODE
sampler use it. Predictors and correctors are small builders, `builder(sde, score_fn, ...) -> update`,
with `update(x, t) -> (x, x_mean)`; they work for any sample shape (B, ...). Random numbers are drawn
with the same calls in the same order as the original code, so `torch.manual_seed(s)` reproduces its
samples.
"""
import weakref

import numpy as np
import torch
from scipy import integrate

from models import utils as mutils
from sde_lib import batch_broadcast

_PREDICTORS = {}
_CORRECTORS = {}


def register_predictor(name):
  """Registers a predictor builder `builder(sde, score_fn, probability_flow) -> update`."""
  def add(builder):
    _PREDICTORS[name] = builder
    return builder
  return add


def register_corrector(name):
  """Registers a corrector builder `builder(sde, score_fn, snr, n_steps) -> update`."""
  def add(builder):
    _CORRECTORS[name] = builder
    return builder
  return add


def get_predictor(name):
  if name not in _PREDICTORS:
    raise ValueError(f'unknown predictor {name!r}; known: {sorted(_PREDICTORS)} and adaptive')
  return _PREDICTORS[name]


def get_corrector(name):
  if name not in _CORRECTORS:
    raise ValueError(f'unknown corrector {name!r}; known: {sorted(_CORRECTORS)}')
  return _CORRECTORS[name]


# ---------------------------------------------------------------------------------------------
# The guided score.

def log_prob_grad(classifier_fn, x, t, labels, eps=mutils.LOG_PROB_EPS):
  """∇x log(softmax(f(x, t)) + eps)[labels] (eps = 0: log_softmax), through the classifier only."""
  with torch.enable_grad():
    x_in = x.detach().requires_grad_(True)
    return mutils.log_prob_input_grad(classifier_fn(x_in, t), x_in, labels, eps=eps)


def get_guided_score_fn(score_fn, classifier_fn=None, labels=None, scale=1.0, eps=mutils.LOG_PROB_EPS):
  """Returns ŝ(x, t) = s(x, t) + scale·log_prob_grad(...); the plain score without a classifier.

  The score network runs without autograd; only the classifier sees a (detached, leaf) input with
  gradients enabled.
  """
  def guided_score(x, t):
    with torch.no_grad():
      score = score_fn(x, t)
    if classifier_fn is None:
      return score
    return score + scale * log_prob_grad(classifier_fn, x, t, labels, eps)
  return guided_score


# ---------------------------------------------------------------------------------------------
# Predictors: update(x, t) -> (x, x_mean).

@register_predictor('none')
def none_predictor(sde, score_fn, probability_flow=False):
  return lambda x, t: (x, x)


@register_predictor('reverse_diffusion')
def reverse_diffusion_predictor(sde, score_fn, probability_flow=False):
  """x_mean = x − rev_f, x = x_mean + rev_G·z on the SDE's own discretisation (rev_f = f_i − κ·G_i²·ŝ)."""
  rsde = sde.reverse(score_fn, probability_flow)

  def update(x, t):
    rev_f, rev_G = rsde.discretize(x, t)
    z = torch.randn_like(x)
    x_mean = x - rev_f
    return x_mean + batch_broadcast(rev_G, x) * z, x_mean
  return update


@register_predictor('euler_maruyama')
def euler_maruyama_predictor(sde, score_fn, probability_flow=False):
  """x_mean = x − drift_rev/N, x = x_mean + g(t)·sqrt(1/N)·z; probability flow gives x = x_mean (B31)."""
  rsde = sde.reverse(score_fn, probability_flow)
  dt = -1. / sde.N

  def update(x, t):
    z = torch.randn_like(x)
    drift, diffusion = rsde.sde(x, t)
    x_mean = x + drift * dt
    if probability_flow:
      return x_mean, x_mean
    return x_mean + batch_broadcast(diffusion, x) * np.sqrt(-dt) * z, x_mean
  return update


@register_predictor('ancestral_sampling')
def ancestral_sampling_predictor(sde, score_fn, probability_flow=False):
  """The SDE's ancestral (SMLD / DDPM) step, with the guided score (the original used the plain one, B31)."""
  if probability_flow:
    raise ValueError('ancestral_sampling has no probability-flow form; use reverse_diffusion')
  if not sde.has_ancestral_step:
    raise NotImplementedError(f'ancestral_sampling: {type(sde).__name__} has no ancestral step '
                              '(VESDE and VPSDE have one)')
  return lambda x, t: sde.ancestral_step(x, score_fn(x, t), t)


# ---------------------------------------------------------------------------------------------
# Correctors: update(x, t) -> (x, x_mean).

@register_corrector('none')
def none_corrector(sde, score_fn, snr, n_steps):
  return lambda x, t: (x, x)


@register_corrector('langevin')
def langevin_corrector(sde, score_fn, snr, n_steps):
  """Langevin step δ = 2α(snr·‖z‖/‖ŝ‖)², the norms being batch means of per-sample L2 norms (as the original)."""

  def update(x, t):
    alpha = sde.langevin_alpha(t)
    for _ in range(n_steps):
      grad = score_fn(x, t)
      noise = torch.randn_like(x)
      grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
      noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
      step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
      x_mean = x + batch_broadcast(step_size, x) * grad
      x = x_mean + batch_broadcast(torch.sqrt(step_size * 2), x) * noise
    return x, x_mean
  return update


@register_corrector('ald')
def annealed_langevin_corrector(sde, score_fn, snr, n_steps):
  """Annealed Langevin dynamics: step 2·α·(snr·σ_t)² per sample, σ_t the marginal std."""

  def update(x, t):
    alpha = sde.langevin_alpha(t)
    std = sde.marginal_prob(x, t)[1]
    for _ in range(n_steps):
      grad = score_fn(x, t)
      noise = torch.randn_like(x)
      step_size = (snr * std) ** 2 * 2 * alpha
      x_mean = x + batch_broadcast(step_size, x) * grad
      x = x_mean + noise * batch_broadcast(torch.sqrt(step_size * 2), x)
    return x, x_mean
  return update


# ---------------------------------------------------------------------------------------------
# Turning models into score / logits functions (with the opt-in speed modes).

_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, compile=False):
  """torch.compile(model), built once per model (it reads the current weights at every call)."""
  if not compile:
    return model
  if model not in _COMPILED:
    _COMPILED[model] = torch.compile(model)
  return _COMPILED[model]


def to_channels_last(*models):
  """Converts the networks' 4-D weights to channels_last in place (same values): oneDNN and cuDNN convolutions
  run faster on it (benchmarks/bench_sampling.py). Meant for networks that are only sampled from."""
  for model in models:
    model.to(memory_format=torch.channels_last)
  return models


def _autocast(fn, device, dtype):
  """fn under autocast to `dtype`, returning float32."""
  if dtype in (None, torch.float32):
    return fn

  def reduced_precision_fn(x, t):
    with torch.autocast(torch.device(device).type, dtype=dtype):
      return fn(x, t).float()
  return reduced_precision_fn


def as_score_fn(sde, score_model, continuous=True, device='cpu', dtype=torch.float32, compile=False):
  """A score function s(x, t) from a score network (eval mode) or an already-built callable."""
  if not isinstance(score_model, torch.nn.Module):
    return score_model
  model = _compiled(score_model, compile)
  return _autocast(mutils.get_score_fn(sde, model, train=False, continuous=continuous), device, dtype)


def as_classifier_fn(sde, classifier_model, continuous=True, compile=False):
  """A logits function f(x, t) from a classifier (eval mode) or an already-built callable.

  The classifier always runs in float32: its input-gradient under bf16 autocast is 10-20% off (relative L2,
  measured in benchmarks/bench_sampling.py) while it costs only ~7% of a guided step's FLOPs.
  """
  if classifier_model is None or not isinstance(classifier_model, torch.nn.Module):
    return classifier_model
  model = _compiled(classifier_model, compile)
  return mutils.get_classifier_fn(sde, model, train=False, continuous=continuous)


def _as_labels(labels, batch_size, device):
  """One target class per sample (a tensor, a list or one int) as an int64 tensor of length batch_size."""
  if labels is None:
    return None
  return torch.as_tensor(labels, device=device).long().expand(batch_size)


def build_guided_score_fn(sde, score_model, classifier_model=None, labels=None, *, batch_size, device,
                          scale=1.0, continuous=True, dtype=torch.float32, compile=False):
  """The guided score of networks (or callables); guidance when both a classifier and `labels` are given."""
  labels = _as_labels(labels, batch_size, device)
  classifier_fn = None if labels is None else as_classifier_fn(sde, classifier_model, continuous, compile)
  score_fn = as_score_fn(sde, score_model, continuous, device, dtype, compile)
  return get_guided_score_fn(score_fn, classifier_fn, labels, scale)


class _FrozenParameters:
  """Turns off requires_grad of a module's parameters for a block (no weight-gradient work)."""

  def __init__(self, *models):
    self.params = [p for m in models if isinstance(m, torch.nn.Module) for p in m.parameters()]

  def __enter__(self):
    self.flags = [p.requires_grad for p in self.params]
    for p in self.params:
      p.requires_grad_(False)

  def __exit__(self, *exc):
    for p, flag in zip(self.params, self.flags):
      p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------
# Samplers.

def _time_grid(sde, eps, batch_size, device):
  """t_i = linspace(T, eps, N) in float32 (computed on the CPU, so every device uses the same grid),
  broadcast to (N, B)."""
  timesteps = torch.linspace(sde.T, eps, sde.N)
  return timesteps[:, None].expand(sde.N, batch_size).contiguous().to(device)


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=True, denoise=True, eps=1e-3, device='cuda',
                   scale=1.0, dtype=torch.float32, compile=False):
  """Predictor–corrector sampler: from x ~ prior, for t_i = linspace(T, eps, N), a corrector then a predictor
  update; returns the last x_mean if `denoise`, else x. `predictor == 'adaptive'` selects the adaptive loop.

  Returns `sampler(score_model, classifier_model=None, labels=None) -> (samples, nfe)`. Models are
  nn.Modules (wrapped with models.utils.get_score_fn / get_classifier_fn in eval mode) or callables
  f(x, t) used as they are; `labels` holds the target class per sample (or one int).
  Guidance is used when both a classifier and `labels` are given. `dtype=torch.bfloat16` runs the score network
  under autocast (the classifier stays float32); `compile` applies torch.compile to both networks.
  """
  adaptive = predictor == 'adaptive'
  if isinstance(predictor, str) and not adaptive:
    predictor = get_predictor(predictor)
  make_corrector = get_corrector(corrector) if isinstance(corrector, str) else corrector
  device = torch.device(device)

  def pc_loop(score_fn):
    predictor_update = predictor(sde, score_fn, probability_flow)
    corrector_update = make_corrector(sde, score_fn, snr, n_steps)
    x = sde.prior_sampling(shape).to(device)
    x_mean = x
    for t in _time_grid(sde, eps, shape[0], device):
      x, x_mean = corrector_update(x, t)
      x, x_mean = predictor_update(x, t)
    return x_mean if denoise else x, sde.N * (n_steps + 1)

  def adaptive_loop(score_fn):  # no final denoising (`denoise` unused), as the original adaptive loop
    corrector_update = make_corrector(sde, score_fn, snr, n_steps)
    return adaptive_sample(sde, score_fn, corrector_update, shape, eps, device, probability_flow)

  loop = adaptive_loop if adaptive else pc_loop

  def pc_sampler(score_model, classifier_model=None, labels=None):
    score_fn = build_guided_score_fn(sde, score_model, classifier_model, labels, batch_size=shape[0],
                                     device=device, scale=scale, continuous=continuous, dtype=dtype,
                                     compile=compile)
    with torch.no_grad(), _FrozenParameters(score_model, classifier_model):
      x, nfe = loop(score_fn)
      return inverse_scaler(x), nfe
  return pc_sampler


def denoise_update(sde, score_fn, x, eps):
  """One reverse-diffusion step at t = eps keeping x_mean (the final noise removal; VE: x + σ_0²·ŝ)."""
  t = torch.full((x.shape[0],), eps, device=x.device)
  return reverse_diffusion_predictor(sde, score_fn)(x, t)[1]


def adaptive_sample(sde, score_fn, corrector_update, shape, eps, device, probability_flow=False,
                    h_init=0.5, abstol=0.0078, reltol=0.01, safety=0.9, exp=0.9):
  """Adaptive-step Heun / Euler–Maruyama loop with per-sample steps h (start 0.5) and error control, as the
  original's adaptive predictor, but ending at the sampler's eps instead of its own 1e-5 (B42).

  Each iteration: corrector, then one `_adaptive_step`. Returns (x, number of iterations).
  """
  rsde = sde.reverse(score_fn, probability_flow)
  x = sde.prior_sampling(shape).to(device)
  t = torch.full((shape[0],), sde.T, device=device)
  h = torch.full((shape[0],), h_init, device=device)
  iterations = 0
  while torch.any(torch.abs(t - eps) > 1e-6):
    x, x_prev = corrector_update(x, t)
    x, t, h = _adaptive_step(rsde, x, x_prev, t, h, eps, abstol, reltol, safety, exp)
    iterations += 1
  return x, iterations


def _reverse_drift(rsde, x, t):
  drift, diffusion = rsde.sde(x, t)
  return drift, torch.as_tensor(diffusion, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _adaptive_step(rsde, x, x_prev, t, h, eps, abstol, reltol, safety, exp):
  """One Heun-extrapolated step with a per-sample error estimate; accepts where the error ≤ 1."""
  z = torch.randn_like(x)
  sqrt_h = batch_broadcast(torch.sqrt(h), x)
  drift, diffusion = _reverse_drift(rsde, x, t)
  k1 = -batch_broadcast(h, x) * drift + batch_broadcast(diffusion, x) * sqrt_h * z
  drift, diffusion = _reverse_drift(rsde, x + k1, t - h)
  k2 = -batch_broadcast(h, x) * drift + batch_broadcast(diffusion, x) * sqrt_h * z
  x_new, x_check, error = x + (k1 + k2) / 2, x + k1, (k2 - k1) / 2
  tol = torch.clamp(reltol * torch.maximum(x_prev.abs(), x_check.abs()), min=abstol)
  e = torch.sqrt(((error / tol) ** 2).reshape(x.shape[0], -1).mean(dim=-1))
  accept = e <= 1
  x = torch.where(batch_broadcast(accept, x), x_new, x)
  t = torch.where(accept, t - h, t)
  growth = torch.where(h > 0, safety * h * e ** (-exp), torch.zeros_like(h))
  h = torch.minimum(torch.clamp(t - eps, min=0), growth)
  return x, t, h


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method='RK45',
                    eps=1e-3, device='cuda', scale=1.0, continuous=True, dtype=torch.float32,
                    compile=False):
  """Guided probability-flow ODE sampler: dx/dt = f − ½g²ŝ integrated from T to eps by scipy solve_ivp
  (RK45 by default) on the whole batch as one float64 vector; then, if `denoise`, one reverse-diffusion step.

  Returns `sampler(score_model, classifier_model=None, labels=None, z=None) -> (samples, nfe)`, nfe being
  the solver's function-evaluation count.
  """
  device = torch.device(device)

  def ode_sampler(score_model, classifier_model=None, labels=None, z=None):
    guided = build_guided_score_fn(sde, score_model, classifier_model, labels, batch_size=shape[0],
                                   device=device, scale=scale, continuous=continuous, dtype=dtype,
                                   compile=compile)
    rsde = sde.reverse(guided, probability_flow=True)

    def ode_func(t, y):
      x = torch.from_numpy(y.reshape(shape)).to(device, torch.float32)
      drift = rsde.sde(x, torch.full((shape[0],), t, dtype=torch.float32, device=device))[0]
      return drift.cpu().numpy().reshape(-1).astype(np.float64)

    with torch.no_grad(), _FrozenParameters(score_model, classifier_model):
      x = sde.prior_sampling(shape).to(device) if z is None else z.to(device)
      solution = integrate.solve_ivp(ode_func, (sde.T, eps), x.cpu().numpy().reshape(-1).astype(np.float64),
                                     rtol=rtol, atol=atol, method=method)
      x = torch.from_numpy(solution.y[:, -1].reshape(shape)).to(device, torch.float32)
      if denoise:
        x = denoise_update(sde, guided, x, eps)
      return inverse_scaler(x), int(solution.nfev)
  return ode_sampler


def get_sampling_fn(config, sde, shape, inverse_scaler, eps):
  """Sampler from `config.sampling` (method 'pc' or 'ode'): fn(score_model, classifier_model=None,
  labels=None) -> (samples, nfe).

  As in the original, guidance follows `config.sampling.conditional`: when True a classifier and labels are
  required; when False the sampler is unguided and ignores them.
  """
  s = config.sampling
  dtype = s.get('dtype', 'float32')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'sampling.dtype = {dtype!r}; use float32 or bfloat16')
  common = dict(eps=eps, device=mutils.get_device(config), scale=float(s.scaling_factor),
                continuous=config.training.continuous, dtype=getattr(torch, dtype),
                compile=bool(s.get('compile', False)))
  method = s.method.lower()
  if method == 'ode':
    sampler = get_ode_sampler(sde, shape, inverse_scaler, denoise=s.noise_removal,
                              rtol=s.get('ode_rtol', 1e-5), atol=s.get('ode_atol', 1e-5), **common)
  elif method == 'pc':
    sampler = get_pc_sampler(sde, shape, s.predictor.lower(), s.corrector.lower(), inverse_scaler,
                             s.snr, n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                             denoise=s.noise_removal, **common)
  else:
    raise ValueError(f'unknown sampling.method {s.method!r}; use pc or ode')

  conditional = s.get('conditional', False)

  def sampling_fn(score_model, classifier_model=None, labels=None):
    if not conditional:
      return sampler(score_model)
    if classifier_model is None or labels is None:
      raise ValueError('sampling.conditional is set: pass a classifier and the target classes')
    return sampler(score_model, classifier_model, labels)
  return sampling_fn
