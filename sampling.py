"""Classifier-guided samplers for score-based models: predictor–corrector loops, the adaptive loop, the
probability-flow ODE.

The guided score  ŝ(x, t) = s(x, t) + λ·∇x log(softmax(f(x, t)) + 1e-8)[y]  is written once
(`get_guided_score_fn`); every predictor, corrector, the adaptive sampler and the probability-flow ODE
sampler use it. Predictors and correctors are small builders, `builder(sde, score_fn, ...) -> update`,
with `update(x, t, t_next) -> (x, x_mean, nfe)`: a step knows where it goes and counts its network evaluations;
they work for any sample shape (B, ...). A sampler walks a time grid (time_grids.py). On the original's grid,
random numbers are drawn with the same calls in the same order as the original code, so `torch.manual_seed(s)`
reproduces its samples.
"""
import copy
import weakref

import numpy as np
import torch
from scipy import integrate

import sde_lib
import registry
import time_grids
from models import utils as mutils
from sde_lib import batch_broadcast

_PREDICTORS = {}
_CORRECTORS = {}


# A predictor builder is `builder(sde, score_fn, probability_flow) -> update`.
register_predictor = registry.decorator_for(_PREDICTORS)
# A corrector builder is `builder(sde, score_fn, snr, n_steps) -> update`.
register_corrector = registry.decorator_for(_CORRECTORS)


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
# Predictors: update(x, t, t_next) -> (x, x_mean, nfe), a step from t to t_next using nfe network evaluations.

@register_predictor('none')
def none_predictor(sde, score_fn, probability_flow=False):
  return lambda x, t, t_next: (x, x, 0)


@register_predictor('reverse_diffusion')
def reverse_diffusion_predictor(sde, score_fn, probability_flow=False):
  """x_mean = x − rev_f, x = x_mean + rev_G·z on the SDE's own discretisation (rev_f = f_i − κ·G_i²·ŝ)."""
  rsde = sde.reverse(score_fn, probability_flow)

  def update(x, t, t_next):
    rev_f, rev_G = rsde.discretize(x, t)
    z = torch.randn_like(x)
    x_mean = x - rev_f
    return x_mean + batch_broadcast(rev_G, x) * z, x_mean, 1
  return update


@register_predictor('euler_maruyama')
def euler_maruyama_predictor(sde, score_fn, probability_flow=False):
  """x_mean = x − drift_rev/N, x = x_mean + g(t)·sqrt(1/N)·z; probability flow gives x = x_mean (B31)."""
  rsde = sde.reverse(score_fn, probability_flow)
  dt = -1. / sde.N

  def update(x, t, t_next):
    z = torch.randn_like(x)
    drift, diffusion = rsde.sde(x, t)
    x_mean = x + drift * dt
    if probability_flow:
      return x_mean, x_mean, 1
    return x_mean + batch_broadcast(diffusion, x) * np.sqrt(-dt) * z, x_mean, 1
  return update


@register_predictor('ancestral_sampling')
def ancestral_sampling_predictor(sde, score_fn, probability_flow=False):
  """The SDE's ancestral (SMLD / DDPM) step, with the guided score (the original used the plain one, B31)."""
  if probability_flow:
    raise ValueError('ancestral_sampling has no probability-flow form; use reverse_diffusion')
  if not sde.has_ancestral_step:
    raise NotImplementedError(f'ancestral_sampling: {type(sde).__name__} has no ancestral step '
                              '(VESDE and VPSDE have one)')

  def update(x, t, t_next):
    return (*sde.ancestral_step(x, score_fn(x, t), t), 1)
  return update


# ---------------------------------------------------------------------------------------------
# Correctors: update(x, t, t_next) -> (x, x_mean, nfe), moves at t (t_next is where the predictor goes next).

@register_corrector('none')
def none_corrector(sde, score_fn, snr, n_steps):
  return lambda x, t, t_next: (x, x, 0)


@register_corrector('langevin')
def langevin_corrector(sde, score_fn, snr, n_steps):
  """Langevin step δ = 2α(snr·‖z‖/‖ŝ‖)², the norms being batch means of per-sample L2 norms (as the original)."""

  def update(x, t, t_next):
    alpha = sde.langevin_alpha(t)
    for _ in range(n_steps):
      grad = score_fn(x, t)
      noise = torch.randn_like(x)
      grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
      noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
      step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
      x_mean = x + batch_broadcast(step_size, x) * grad
      x = x_mean + batch_broadcast(torch.sqrt(step_size * 2), x) * noise
    return x, x_mean, n_steps
  return update


@register_corrector('ald')
def annealed_langevin_corrector(sde, score_fn, snr, n_steps):
  """Annealed Langevin dynamics: step 2·α·(snr·σ_t)² per sample, σ_t the marginal std."""

  def update(x, t, t_next):
    alpha = sde.langevin_alpha(t)
    std = sde.marginal_prob(x, t)[1]
    for _ in range(n_steps):
      grad = score_fn(x, t)
      noise = torch.randn_like(x)
      step_size = (snr * std) ** 2 * 2 * alpha
      x_mean = x + batch_broadcast(step_size, x) * grad
      x = x_mean + noise * batch_broadcast(torch.sqrt(step_size * 2), x)
    return x, x_mean, n_steps
  return update


# ---------------------------------------------------------------------------------------------
# Steps on the probability-flow ODE in σ (Karras et al. 2022): with x̂ = x / s(t), s the SDE's mean coefficient
# (1 for VE) and σ its noise-to-signal ratio std / s, every SDE's flow is dx̂/dσ = −σ·s·score(x, t). These steps go
# exactly to t_next, whatever the grid, and evaluate the (guided) score at the times of the grid only.

def _flow_coefficients(sde, t):
  """(s, σ) per sample at t; t = 0, the grid's noise-free end, has σ = 0."""
  return sde.mean_coeff(t), torch.where(t > 0, sde.sigma(t), torch.zeros_like(t))


def _flow_slope(score_fn, x, t, s, sigma):
  """dx̂/dσ = −σ·s·score(x, t)."""
  return -batch_broadcast(sigma * s, x) * score_fn(x, t)


def _heun_step(sde, score_fn, x, t, t_next):
  """Heun step from t to t_next, Euler when t_next is the noise-free end; returns (x, nfe)."""
  s, sigma = _flow_coefficients(sde, t)
  s_next, sigma_next = _flow_coefficients(sde, t_next)
  x_hat, h = x / batch_broadcast(s, x), batch_broadcast(sigma_next - sigma, x)
  slope = _flow_slope(score_fn, x, t, s, sigma)
  x_next = (x_hat + h * slope) * batch_broadcast(s_next, x)
  if not bool((sigma_next > 0).all()):
    return x_next, 1
  slope_next = _flow_slope(score_fn, x_next, t_next, s_next, sigma_next)
  return (x_hat + h * (slope + slope_next) / 2) * batch_broadcast(s_next, x), 2


@register_predictor('heun')
def heun_predictor(sde, score_fn, probability_flow=True):
  """Deterministic second-order Heun step on the (guided) probability-flow ODE; always the flow."""
  def update(x, t, t_next):
    x, nfe = _heun_step(sde, score_fn, x, t, t_next)
    return x, x, nfe
  return update


@register_predictor('heun_churn')
def stochastic_heun_predictor(sde, score_fn, probability_flow=False, S_churn=0., S_tmin=0., S_tmax=float('inf'),
                              S_noise=1., num_steps=1000):
  """Heun step after raising the noise from σ to σ̂ = σ(1 + γ), γ = min(S_churn / N, √2 − 1) where
  S_tmin ≤ σ ≤ S_tmax (Karras et al. 2022, Alg. 2): x̂ += sqrt(σ̂² − σ²)·S_noise·z, then the flow from σ̂."""
  gamma = min(S_churn / num_steps, 2 ** 0.5 - 1)
  if gamma == 0:
    return heun_predictor(sde, score_fn)

  def update(x, t, t_next):
    s, sigma = _flow_coefficients(sde, t)
    churned = (sigma >= S_tmin) & (sigma <= S_tmax)
    sigma_hat = torch.where(churned, sigma * (1 + gamma), sigma)
    t_hat = torch.where(churned, sde.time_of_sigma(sigma_hat), t)
    noise = torch.randn_like(x) * S_noise
    x_hat = x / batch_broadcast(s, x) + batch_broadcast(torch.sqrt(sigma_hat ** 2 - sigma ** 2), x) * noise
    x, nfe = _heun_step(sde, score_fn, x_hat * batch_broadcast(sde.mean_coeff(t_hat), x), t_hat, t_next)
    return x, x, nfe
  return update


@register_predictor('dpm_solver_2m')
def dpm_solver_2m_predictor(sde, score_fn, probability_flow=True, eta=0., S_noise=1.):
  """DPM-Solver++(2M) (Lu et al. 2022): the exponential integrator in log σ on the denoised estimate
  D = x̂ + σ²·s·score, second order through the previous step's D; one evaluation per step, first order on the
  first step and on the last (which returns D itself). Keeps the previous step: build one per sampling run.

  η ≥ 0 is the SDE form (SDE-DPM-Solver++(2M)): the reverse SDE whose Langevin part is η times that of the
  original reverse SDE (Karras et al. 2022, eq. 6 with β = η·σ̇/σ): η = 0 is the probability-flow ODE, η = 1 the
  reverse SDE, η > 1 mixes more at every noise level. Per step h = log(σ/σ'), x̂' = e^{−(1+η)h}·x̂ +
  (1 − e^{−(1+η)h})·D₂ + σ'·√(1 − e^{−2ηh})·S_noise·z, exact when D is constant. `probability_flow` is not read:
  η chooses."""
  previous = {}

  def update(x, t, t_next):
    s, sigma = _flow_coefficients(sde, t)
    s_next, sigma_next = _flow_coefficients(sde, t_next)
    x_hat = x / batch_broadcast(s, x)
    denoised = x_hat + batch_broadcast(sigma ** 2 * s, x) * score_fn(x, t)
    estimate = denoised
    if previous and bool((sigma_next > 0).all()):
      half_inverse_ratio = batch_broadcast(torch.log(sigma / sigma_next) / torch.log(previous['sigma'] / sigma) / 2, x)
      estimate = (1 + half_inverse_ratio) * denoised - half_inverse_ratio * previous['denoised']
    previous.update(sigma=sigma, denoised=denoised)
    ratio = sigma_next / sigma
    decay = batch_broadcast(ratio * ratio ** eta, x)  # e^{−(1+η)h}
    x_mean = decay * x_hat + (1 - decay) * estimate
    x = x_mean
    if eta:
      x = x + batch_broadcast(sigma_next * torch.sqrt(1 - ratio ** (2 * eta)), x) * S_noise * torch.randn_like(x)
    return x * batch_broadcast(s_next, x), x_mean * batch_broadcast(s_next, x), 1
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

# Predictors that step by the SDE's own discretisation at t (its tables, dt = −1/N): they walk the linear grid of its N.
_SDE_STEP_PREDICTORS = ('reverse_diffusion', 'euler_maruyama', 'ancestral_sampling')


def _time_grid(sde, eps, batch_size, device, grid='linear', num_steps=None, rho=7.):
  """The N + 1 times of `time_grids.time_grid` (N = sde.N by default; the original's grid is 'linear'),
  broadcast to (N + 1, B)."""
  times = time_grids.time_grid(grid, sde, num_steps or sde.N, eps, rho)
  return times[:, None].expand(len(times), batch_size).contiguous().to(device)


def _check_grid(predictor, sde, grid, num_steps):
  if predictor in _SDE_STEP_PREDICTORS and (grid != 'linear' or num_steps not in (None, sde.N)):
    raise ValueError(f'predictor {predictor!r} steps by the SDE\'s own discretisation: it needs sampling.grid = '
                     f'linear with num_steps = the SDE\'s N ({sde.N}), not {grid!r} with {num_steps}')


def sample_steps(x, times, predictor_update, corrector_update):
  """Walks the grid: corrector then predictor from times[i] to times[i + 1]; returns (x, x_mean, nfe)."""
  x_mean, nfe = x, 0
  for t, t_next in zip(times[:-1], times[1:]):
    x, x_mean, corrector_nfe = corrector_update(x, t, t_next)
    x, x_mean, predictor_nfe = predictor_update(x, t, t_next)
    nfe += corrector_nfe + predictor_nfe
  return x, x_mean, nfe


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=True, denoise=True, eps=1e-3, device='cuda',
                   scale=1.0, dtype=torch.float32, compile=False, grid='linear', num_steps=None, rho=7.,
                   predictor_options=None):
  """Predictor–corrector sampler over a time grid: from x ~ prior, a corrector then a predictor step from each t_i to
  t_{i+1}; returns the last x_mean if `denoise`, else x. `predictor == 'adaptive'` selects the adaptive loop.

  Returns `sampler(score_model, classifier_model=None, labels=None, z=None) -> (samples, nfe)`, nfe counting the
  network evaluations (a score evaluation with its guidance gradient counts once). Models are nn.Modules (wrapped
  with models.utils.get_score_fn / get_classifier_fn in eval mode) or callables f(x, t) used as they are; `labels`
  holds the target class per sample (or one int); `z` replaces the draw from the prior. Guidance is used when both
  a classifier and `labels` are given. The defaults (the linear grid of sde.N times) are the original sampler:
  same random draws, same samples. `grid`, `num_steps` and `rho` select another grid (time_grids.py);
  `predictor_options` go to the predictor's builder (heun_churn's S_churn, S_tmin, S_tmax, S_noise, num_steps).
  `dtype=torch.bfloat16` runs the score network under autocast (the classifier stays float32); `compile` applies
  torch.compile to both networks.
  """
  adaptive = predictor == 'adaptive'
  if isinstance(predictor, str) and not adaptive:
    _check_grid(predictor, sde, grid, num_steps)
    predictor = get_predictor(predictor)
  make_corrector = get_corrector(corrector) if isinstance(corrector, str) else corrector
  device = torch.device(device)

  def pc_loop(score_fn, x):
    predictor_update = predictor(sde, score_fn, probability_flow, **(predictor_options or {}))
    corrector_update = make_corrector(sde, score_fn, snr, n_steps)
    times = _time_grid(sde, eps, shape[0], device, grid, num_steps, rho)
    x, x_mean, nfe = sample_steps(x, times, predictor_update, corrector_update)
    return x_mean if denoise else x, nfe

  def adaptive_loop(score_fn, x):  # no final denoising (`denoise` unused), as the original adaptive loop
    corrector_update = make_corrector(sde, score_fn, snr, n_steps)
    return adaptive_sample(sde, score_fn, corrector_update, x, eps, probability_flow)

  loop = adaptive_loop if adaptive else pc_loop

  def pc_sampler(score_model, classifier_model=None, labels=None, z=None):
    score_fn = build_guided_score_fn(sde, score_model, classifier_model, labels, batch_size=shape[0],
                                     device=device, scale=scale, continuous=continuous, dtype=dtype,
                                     compile=compile)
    with torch.no_grad(), _FrozenParameters(score_model, classifier_model):
      x = sde.prior_sampling(shape).to(device) if z is None else z.to(device)
      x, nfe = loop(score_fn, x)
      return inverse_scaler(x), nfe
  return pc_sampler


def denoise_update(sde, score_fn, x, eps):
  """One reverse-diffusion step at t = eps keeping x_mean (the final noise removal; VE: x + σ_0²·ŝ)."""
  t = torch.full((x.shape[0],), eps, device=x.device)
  return reverse_diffusion_predictor(sde, score_fn)(x, t, torch.zeros_like(t))[1]


def adaptive_sample(sde, score_fn, corrector_update, x, eps, probability_flow=False,
                    h_init=0.5, abstol=0.0078, reltol=0.01, safety=0.9, exp=0.9):
  """Adaptive-step Heun / Euler–Maruyama loop from x at T with per-sample steps h (start 0.5) and error control, as
  the original's adaptive predictor, but ending at the sampler's eps instead of its own 1e-5 (B42).

  Each iteration: corrector, then one `_adaptive_step` (two reverse drifts). Returns (x, nfe).
  """
  rsde = sde.reverse(score_fn, probability_flow)
  t = torch.full((x.shape[0],), sde.T, device=x.device)
  h = torch.full((x.shape[0],), h_init, device=x.device)
  nfe = 0
  while torch.any(torch.abs(t - eps) > 1e-6):
    x, x_prev, corrector_nfe = corrector_update(x, t, t)  # the next time is not known before the step
    x, t, h = _adaptive_step(rsde, x, x_prev, t, h, eps, abstol, reltol, safety, exp)
    nfe += corrector_nfe + 2
  return x, nfe


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


def sde_with_steps(config, sde, num_steps):
  """The SDE discretised with num_steps (sampling.num_steps) instead of model.num_scales, for the steps and tables
  of the original predictors and correctors; continuous-time networks do not depend on it."""
  if num_steps == sde.N:
    return sde
  if not config.training.continuous:
    raise ValueError(f'sampling.num_steps = {num_steps} differs from model.num_scales = {sde.N}, which the '
                     'discrete-time networks (training.continuous = False) are tied to')
  resized = copy.deepcopy(config)
  resized.model.num_scales = num_steps
  return sde_lib.get_sde(resized)[0]


def predictor_options(sampling_config, predictor, num_steps):
  """The config fields the predictor's builder takes: heun_churn's S_churn, S_tmin, S_tmax, S_noise and
  dpm_solver_2m's eta, S_noise."""
  if predictor == 'dpm_solver_2m':
    return {name: float(sampling_config.get(name, default)) for name, default in (('eta', 0.), ('S_noise', 1.))}
  if predictor != 'heun_churn':
    return {}
  options = {name: float(sampling_config[name]) for name in ('S_churn', 'S_tmin', 'S_tmax', 'S_noise')}
  options['num_steps'] = num_steps
  return options


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
    num_steps = s.get('num_steps', 0) or sde.N
    predictor = s.predictor.lower()
    sampler = get_pc_sampler(sde_with_steps(config, sde, num_steps), shape, predictor, s.corrector.lower(),
                             inverse_scaler, s.snr, n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                             denoise=s.noise_removal, grid=s.get('grid', 'linear'), num_steps=num_steps,
                             rho=s.get('rho', 7.), predictor_options=predictor_options(s, predictor, num_steps),
                             **common)
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
