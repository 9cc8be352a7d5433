"""Classifier-guided samplers for score-based models, all driven by one guided denoiser.

`GuidedDenoiser` is built once per sampling run from the SDE, the score network, the classifier, the labels and the
guidance. It gives the guided score  ŝ(x, t) = s(x, t) + λ·∇x log(softmax(f(x, t)) + 1e-8)[y]  (`get_guided_score_fn`,
the formula's one place) and the denoised estimate D(x̂, σ) built from it, and counts its network evaluations: a score
evaluation with its guidance gradient is one.

- The original's predictors and correctors are small builders, `builder(sde, score_fn, ...) -> update` with
  `update(x, t, t_next) -> (x, x_mean)`, walked over a time grid (time_grids.py) by `sample_pc`. On the original's
  grid random numbers are drawn with the same calls in the same order as the original code, so `torch.manual_seed(s)`
  reproduces its samples. `sample_adaptive` and `sample_ode` are the original's adaptive and ODE samplers.
- A σ-space solver is one function `sample_<name>(denoiser, x, sigmas, **options)` (k-diffusion's shape). It works on
  the scaled sample x̂ = x / s(t) at the noise-to-signal ratio σ = std / s(t) (Karras et al. 2022), where every SDE's
  probability flow is dx̂/dσ = (x̂ − D(x̂, σ)) / σ, and walks σ_0 > … > σ_N, σ_N = 0 being the noise-free end.
- `get_sampling_fn` builds the sampler that config.sampling names (method 'pc', 'ode' or a solver) and checks its
  options while building it; a solver's options are config.sampling.<name>.

A new σ-space solver is its function and the `@register_solver` line above it; options it takes get their values
from a config.sampling.<name> section.
"""
import dataclasses
import functools
import math
import typing
import weakref

import numpy as np
import torch
from scipy import integrate

import registry
import time_grids
from models import utils as mutils
from sde_lib import batch_broadcast

_PREDICTORS = {}
_CORRECTORS = {}
_SOLVERS = {}


# A predictor builder is `builder(sde, score_fn, probability_flow) -> update`.
register_predictor = registry.decorator_for(_PREDICTORS)
# A corrector builder is `builder(sde, score_fn, snr, n_steps) -> update`.
register_corrector = registry.decorator_for(_CORRECTORS)
# A σ-space solver is `sample(denoiser, x, sigmas, **options) -> x at sigmas[-1]`.
register_solver = registry.decorator_for(_SOLVERS)


def _lookup(table, kind, name):
  if name not in table:
    raise ValueError(f'unknown {kind} {name!r}; known: {sorted(table)}')
  return table[name]


def get_predictor(name):
  return _lookup(_PREDICTORS, 'predictor', name)


def get_corrector(name):
  return _lookup(_CORRECTORS, 'corrector', name)


def get_solver(name):
  return _lookup(_SOLVERS, 'sampler', name)


class OptionError(ValueError):
  """A sampler option outside its range, said as '<option>=<value>: must be <what is allowed>'."""


def require_option(condition, option, value, allowed):
  if not condition:
    raise OptionError(f'{option}={value!r}: must be {allowed}')


def require_nonnegative(**options):
  for option, value in options.items():
    require_option(isinstance(value, (int, float)) and value >= 0, option, value, 'a number >= 0')


# ---------------------------------------------------------------------------------------------
# The guided score and the guided denoiser.

def log_prob_grad(classifier_fn, x, t, labels, eps=mutils.LOG_PROB_EPS):
  """∇x log(softmax(f(x, t)) + eps)[labels] (eps = 0: log_softmax), through the classifier only."""
  with torch.enable_grad():
    x_in = x.detach().requires_grad_(True)
    return mutils.log_prob_input_grad(classifier_fn(x_in, t), x_in, labels, eps=eps)


def get_guided_score_fn(score_fn, classifier_fn=None, labels=None, scale=1.0, eps=mutils.LOG_PROB_EPS):
  """Returns ŝ(x, t) = s(x, t) + λ·log_prob_grad(...); the plain score without a classifier.

  λ is `scale`, or `scale(t)` per sample where `scale` is a function of t; the classifier is not run where that λ is
  0 for every sample. The score network runs without autograd; only the classifier sees a (detached, leaf) input
  with gradients enabled.
  """
  def guided_score(x, t):
    with torch.no_grad():
      score = score_fn(x, t)
    if classifier_fn is None:
      return score
    weight = batch_broadcast(scale(t), x) if callable(scale) else scale
    if torch.is_tensor(weight) and not weight.any():
      return score
    return score + weight * log_prob_grad(classifier_fn, x, t, labels, eps)
  return guided_score


@dataclasses.dataclass(frozen=True)
class Guidance:
  """The guidance scale λ and the noise levels it applies at: sigma_min ≤ σ(t) ≤ sigma_max (all by default)."""
  scale: float = 1.
  sigma_min: float = 0.
  sigma_max: float = math.inf

  @property
  def everywhere(self):
    return self.sigma_min <= 0 and self.sigma_max == math.inf

  def scale_of(self, sde):
    """λ, or where the range leaves out some σ, the function t -> λ·1[sigma_min ≤ σ(t) ≤ sigma_max] per sample."""
    if self.everywhere:
      return self.scale

    def scale_at(t):
      sigma = sde.sigma(t)
      return self.scale * ((sigma >= self.sigma_min) & (sigma <= self.sigma_max)).to(t.dtype)
    return scale_at


def _time_and_mean_coeff(sde, sigma):
  """(t, s(t)) at σ(t) = sigma, float64 of shape (1,): σ = 0 is t = 0 (VE: −∞) with s = 1."""
  t = sde.time_of_sigma(torch.full((1,), float(sigma), dtype=torch.float64))
  return t, sde.mean_coeff(t)


class GuidedDenoiser:
  """The guided score ŝ(x, t) of one sampling run, and the denoised D(x̂, σ) made from it; `nfe` counts the network
  evaluations (a score with its guidance gradient is one)."""

  def __init__(self, sde, score_fn, classifier_fn=None, labels=None, guidance=Guidance()):
    self.sde = sde
    self.guided_score = get_guided_score_fn(score_fn, classifier_fn, labels, guidance.scale_of(sde))
    self.nfe = 0

  def score(self, x, t):
    """ŝ(x, t), one network evaluation."""
    self.nfe += 1
    return self.guided_score(x, t)

  def __call__(self, x, sigma):
    """D(x̂, σ) = x̂ + σ²·s·ŝ(s·x̂, t) at the t with σ(t) = σ and s = s(t): the denoised estimate of the scaled
    sample x̂ at noise level σ (Karras et al. 2022, eq. 3 and their s(t)); one network evaluation."""
    t, s = _time_and_mean_coeff(self.sde, sigma)
    t, s, weight = (value.to(x.device, x.dtype).repeat(x.shape[0]) for value in (t, s, float(sigma) ** 2 * s))
    return x + batch_broadcast(weight, x) * self.score(x * batch_broadcast(s, x), t)


# ---------------------------------------------------------------------------------------------
# Networks as score / logits functions (with the opt-in speed modes).

_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, compile=False):
  """torch.compile(model), built once per model (it reads the current weights at every call)."""
  if not compile:
    return model
  if model not in _COMPILED:
    _COMPILED[model] = torch.compile(model)
  return _COMPILED[model]


def _autocast(fn, dtype):
  """fn under autocast to `dtype` on the device of its input, returning float32."""
  if dtype in (None, torch.float32):
    return fn

  def reduced_precision_fn(x, t):
    with torch.autocast(x.device.type, dtype=dtype):
      return fn(x, t).float()
  return reduced_precision_fn


def as_score_fn(sde, score_model, continuous=True, dtype=torch.float32, compile=False):
  """A score function s(x, t) from a score network (eval mode) or an already-built callable."""
  if not isinstance(score_model, torch.nn.Module):
    return score_model
  model = _compiled(score_model, compile)
  return _autocast(mutils.get_score_fn(sde, model, train=False, continuous=continuous), dtype)


def as_classifier_fn(sde, classifier_model, continuous=True, compile=False, dtype=torch.float32):
  """A logits function f(x, t) from a classifier (eval mode) or an already-built callable; `dtype=torch.bfloat16`
  runs its forward (and so its input-gradient) under autocast.

  The default is float32: the classifier's input-gradient under bf16 autocast is 10-20% off (relative L2,
  measured in benchmarks/bench_sampling.py) while it costs only ~7% of a guided step's FLOPs.
  """
  if classifier_model is None or not isinstance(classifier_model, torch.nn.Module):
    return classifier_model
  model = _compiled(classifier_model, compile)
  return _autocast(mutils.get_classifier_fn(sde, model, train=False, continuous=continuous), dtype)


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
  """How the networks run while sampling: continuous time input (or the discrete σ index), the score network's
  autocast dtype, the classifier's (its forward and input-gradient) and torch.compile of both."""
  continuous: bool = True
  dtype: torch.dtype = torch.float32
  classifier_dtype: torch.dtype = torch.float32
  compile: bool = False


def build_denoiser(sde, score_model, classifier_model=None, labels=None, guidance=Guidance(),
                   settings=NetworkSettings()):
  """The GuidedDenoiser of networks (or callables f(x, t)) run as `settings` say; guided when both a classifier and
  `labels` (one class per sample) are given."""
  classifier_fn = None if labels is None else as_classifier_fn(sde, classifier_model, settings.continuous,
                                                               settings.compile, settings.classifier_dtype)
  score_fn = as_score_fn(sde, score_model, settings.continuous, settings.dtype, settings.compile)
  return GuidedDenoiser(sde, score_fn, classifier_fn, labels, guidance)


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
# The original's predictors: update(x, t, t_next) -> (x, x_mean), a step from t to t_next.

@register_predictor('none')
def none_predictor(sde, score_fn, probability_flow=False):
  return lambda x, t, t_next: (x, x)


@register_predictor('reverse_diffusion')
def reverse_diffusion_predictor(sde, score_fn, probability_flow=False):
  """x_mean = x − rev_f, x = x_mean + rev_G·z on the SDE's own discretisation (rev_f = f_i − κ·G_i²·ŝ)."""
  rsde = sde.reverse(score_fn, probability_flow)

  def update(x, t, t_next):
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

  def update(x, t, t_next):
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
    raise ValueError('predictor ancestral_sampling has no probability-flow form: set sampling.probability_flow = '
                     'False or use reverse_diffusion')
  if not sde.has_ancestral_step:
    raise NotImplementedError(f'ancestral_sampling: {type(sde).__name__} has no ancestral step '
                              '(VESDE and VPSDE have one)')

  def update(x, t, t_next):
    return sde.ancestral_step(x, score_fn(x, t), t)
  return update


# ---------------------------------------------------------------------------------------------
# The original's correctors: update(x, t, t_next) -> (x, x_mean), moves at t (t_next is where the predictor goes).

@register_corrector('none')
def none_corrector(sde, score_fn, snr, n_steps):
  return lambda x, t, t_next: (x, x)


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
    return x, x_mean
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
    return x, x_mean
  return update


# ---------------------------------------------------------------------------------------------
# The original's samplers: predictor–corrector on a time grid, the adaptive loop, the probability-flow ODE.

# Predictors that step by the SDE's own discretisation at t (its tables, dt = −1/N): they walk the linear grid of its N.
_SDE_STEP_PREDICTORS = ('reverse_diffusion', 'euler_maruyama', 'ancestral_sampling')


@dataclasses.dataclass(frozen=True)
class PCSettings:
  """The predictor–corrector sampler's settings (config.sampling's fields of the same names): `denoise` returns the
  last x_mean (the final noise removal, sampling.noise_removal). Predictor 'adaptive' is the adaptive loop."""
  predictor: str = 'reverse_diffusion'
  corrector: str = 'langevin'
  snr: float = 0.16
  n_steps_each: int = 1
  probability_flow: bool = False
  denoise: bool = True

  def __post_init__(self):
    if self.predictor != 'adaptive':
      get_predictor(self.predictor)
    get_corrector(self.corrector)
    require_option(self.snr > 0, 'snr', self.snr, 'a number > 0')
    require_option(isinstance(self.n_steps_each, int) and self.n_steps_each >= 1, 'n_steps_each', self.n_steps_each,
             'an integer >= 1')

  def steps(self, sde, score_fn):
    """(predictor update, corrector update) on `sde` with `score_fn`."""
    return (get_predictor(self.predictor)(sde, score_fn, self.probability_flow),
            get_corrector(self.corrector)(sde, score_fn, self.snr, self.n_steps_each))


def sample_pc(denoiser, x, times, pc=PCSettings()):
  """The original sampler: from x at times[0], a corrector then a predictor step from each t_i to t_{i+1} of the
  1-D grid `times` (time_grids.time_grid); the last x_mean if `pc.denoise`, else x."""
  predictor, corrector = pc.steps(denoiser.sde, denoiser.score)
  batch_times = times[:, None].expand(len(times), x.shape[0]).contiguous().to(x.device)
  x_mean = x
  for t, t_next in zip(batch_times[:-1], batch_times[1:]):
    x, x_mean = corrector(x, t, t_next)
    x, x_mean = predictor(x, t, t_next)
  return x_mean if pc.denoise else x


@dataclasses.dataclass(frozen=True)
class AdaptiveTolerances:
  """The adaptive loop's first step h, error tolerances and step-size control, as the original's."""
  h_init: float = 0.5
  abstol: float = 0.0078
  reltol: float = 0.01
  safety: float = 0.9
  exp: float = 0.9


def sample_adaptive(denoiser, x, eps, pc=PCSettings(), tolerances=AdaptiveTolerances()):
  """Adaptive-step Heun / Euler–Maruyama loop from x at T with per-sample steps h and error control, as the
  original's adaptive predictor, but ending at the sampler's eps instead of its own 1e-5 (B42); no final denoising,
  as the original. Each iteration: the corrector, then one `_adaptive_step` (two reverse drifts)."""
  sde = denoiser.sde
  corrector = get_corrector(pc.corrector)(sde, denoiser.score, pc.snr, pc.n_steps_each)
  rsde = sde.reverse(denoiser.score, pc.probability_flow)
  t = torch.full((x.shape[0],), sde.T, device=x.device)
  h = torch.full((x.shape[0],), tolerances.h_init, device=x.device)
  while torch.any(torch.abs(t - eps) > 1e-6):
    x, x_prev = corrector(x, t, t)  # the next time is not known before the step
    x, t, h = _adaptive_step(rsde, x, x_prev, t, h, eps, tolerances)
  return x


def _reverse_drift(rsde, x, t):
  drift, diffusion = rsde.sde(x, t)
  return drift, torch.as_tensor(diffusion, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _adaptive_step(rsde, x, x_prev, t, h, eps, tolerances):
  """One Heun-extrapolated step with a per-sample error estimate; accepts where the error ≤ 1."""
  z = torch.randn_like(x)
  sqrt_h = batch_broadcast(torch.sqrt(h), x)
  drift, diffusion = _reverse_drift(rsde, x, t)
  k1 = -batch_broadcast(h, x) * drift + batch_broadcast(diffusion, x) * sqrt_h * z
  drift, diffusion = _reverse_drift(rsde, x + k1, t - h)
  k2 = -batch_broadcast(h, x) * drift + batch_broadcast(diffusion, x) * sqrt_h * z
  x_new, x_check, error = x + (k1 + k2) / 2, x + k1, (k2 - k1) / 2
  tol = torch.clamp(tolerances.reltol * torch.maximum(x_prev.abs(), x_check.abs()), min=tolerances.abstol)
  e = torch.sqrt(((error / tol) ** 2).reshape(x.shape[0], -1).mean(dim=-1))
  accept = e <= 1
  x = torch.where(batch_broadcast(accept, x), x_new, x)
  t = torch.where(accept, t - h, t)
  growth = torch.where(h > 0, tolerances.safety * h * e ** (-tolerances.exp), torch.zeros_like(h))
  h = torch.minimum(torch.clamp(t - eps, min=0), growth)
  return x, t, h


def denoise_update(sde, score_fn, x, eps):
  """One reverse-diffusion step at t = eps keeping x_mean (the final noise removal; VE: x + σ_0²·ŝ)."""
  t = torch.full((x.shape[0],), eps, device=x.device)
  return reverse_diffusion_predictor(sde, score_fn)(x, t, torch.zeros_like(t))[1]


def sample_ode(denoiser, x, eps, rtol=1e-5, atol=1e-5, denoise=False):
  """The guided probability-flow ODE dx/dt = f − ½g²ŝ integrated from T to eps by scipy's RK45 on the whole batch
  as one float64 vector; then, if `denoise`, one reverse-diffusion step at eps. Every drift is one evaluation."""
  sde, shape, device = denoiser.sde, x.shape, x.device
  rsde = sde.reverse(denoiser.score, probability_flow=True)

  def ode_func(t, y):
    x = torch.from_numpy(y.reshape(shape)).to(device, torch.float32)
    drift = rsde.sde(x, torch.full((shape[0],), t, dtype=torch.float32, device=device))[0]
    return drift.cpu().numpy().reshape(-1).astype(np.float64)

  solution = integrate.solve_ivp(ode_func, (sde.T, eps), x.cpu().numpy().reshape(-1).astype(np.float64),
                                 rtol=rtol, atol=atol, method='RK45')
  x = torch.from_numpy(solution.y[:, -1].reshape(shape)).to(device, torch.float32)
  return denoise_update(sde, denoiser.score, x, eps) if denoise else x


# ---------------------------------------------------------------------------------------------
# σ-space solvers: sample(denoiser, x̂, sigmas, **options) -> x̂ at sigmas[-1]; λ = −log σ, h = λ_{i+1} − λ_i.

def _pairs(sigmas):
  """(σ_i, σ_{i+1}) of consecutive grid points, as floats."""
  values = sigmas.tolist()
  return zip(values[:-1], values[1:])


def _phi(k, h):
  """φ_k(−h) = ∫_0^1 e^{−(1−θ)h} θ^{k−1}/(k−1)! dθ for k ≥ 1, so that ∫_0^h e^{−(h−u)} u^n/n! du = h^{n+1}·φ_{n+1}(−h):
  φ_1 = (1 − e^{−h})/h, then φ_{k+1} = (1/k! − φ_k)/h."""
  value = -math.expm1(-h) / h
  for j in range(1, k):
    value = (1 / math.factorial(j) - value) / h
  return value


def _sde_noise(x, sigma_next, h, eta, s_noise):
  """The noise of an SDE step from λ to λ + h with η times the reverse SDE's Langevin part: σ'·√(1 − e^{−2ηh})·z."""
  return sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise * torch.randn_like(x)


@register_solver('euler')
def sample_euler(denoiser, x, sigmas):
  """Euler steps of the probability flow dx̂/dσ = (x̂ − D(x̂, σ)) / σ (Karras et al. 2022, eq. 3)."""
  for sigma, sigma_next in _pairs(sigmas):
    x = x + (sigma_next - sigma) * (x - denoiser(x, sigma)) / sigma
  return x


@register_solver('heun')
def sample_heun(denoiser, x, sigmas, s_churn=0., s_tmin=0., s_tmax=math.inf, s_noise=1.):
  """Karras et al. 2022, Algorithm 2. Where s_tmin ≤ σ_i ≤ s_tmax the noise is first raised to σ̂ = σ_i·(1 + γ),
  γ = min(s_churn / N, √2 − 1) over N steps, by adding √(σ̂² − σ_i²)·s_noise·z; then a Heun step of the flow from
  σ̂ to σ_{i+1}, Euler where σ_{i+1} = 0. s_churn = 0 is the deterministic Algorithm 1."""
  require_nonnegative(s_churn=s_churn, s_noise=s_noise)
  gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
  for sigma, sigma_next in _pairs(sigmas):
    if gamma > 0 and s_tmin <= sigma <= s_tmax:
      sigma_hat = sigma * (1 + gamma)
      x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * torch.randn_like(x)
      sigma = sigma_hat
    slope = (x - denoiser(x, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * slope
    if sigma_next > 0:
      slope_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
      x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
    x = x_next
  return x


@register_solver('dpmpp_2m')
def sample_dpmpp_2m(denoiser, x, sigmas, eta=0., s_noise=1., second_order_below=math.inf):
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), and for η > 0 its SDE form: the reverse SDE whose Langevin part
  is η times that of the original reverse SDE (Karras et al. 2022, eq. 6 with β = η·σ̇/σ); η = 0 is the
  probability-flow ODE, η = 1 the reverse SDE, η > 1 mixes more at every noise level.

  Per step x̂' = e^{−(1+η)h}·x̂ + (1 − e^{−(1+η)h})·D₂ + σ'·√(1 − e^{−2ηh})·s_noise·z, with
  D₂ = D + (D − D_prev)·h / (2·h_prev) on the steps from σ < second_order_below, D₂ = D (the first-order
  DPM-Solver++(1S)) on the first step and from σ ≥ second_order_below; the step to σ = 0 returns D."""
  require_nonnegative(eta=eta, s_noise=s_noise, second_order_below=second_order_below)
  previous = None  # (h, D) of the previous step
  for sigma, sigma_next in _pairs(sigmas):
    denoised = denoiser(x, sigma)
    if sigma_next == 0:
      return denoised
    h = math.log(sigma / sigma_next)
    estimate = denoised
    if previous is not None and sigma < second_order_below:
      estimate = denoised + (denoised - previous[1]) * h / (2 * previous[0])
    decay = math.exp(-(1 + eta) * h)
    x = decay * x + (1 - decay) * estimate
    if eta:
      x = x + _sde_noise(x, sigma_next, h, eta, s_noise)
    previous = (h, denoised)
  return x


def _lambda_derivatives(points):
  """(D', D'') in λ at the newest of up to three (λ, D) points (newest last), by Newton's divided differences; None
  for what too few points leave open."""
  if len(points) < 2:
    return None, None
  (lam_2, d_2), (lam_1, d_1), (lam_0, d_0) = [(None, None)] * (3 - len(points)) + points
  slope_1 = (d_0 - d_1) / (lam_0 - lam_1)
  if lam_2 is None:
    return slope_1, None
  half_curvature = (slope_1 - (d_1 - d_2) / (lam_1 - lam_2)) / (lam_0 - lam_2)
  return slope_1 + (lam_0 - lam_1) * half_curvature, 2 * half_curvature


@register_solver('dpmpp_3m_sde')
def sample_dpmpp_3m_sde(denoiser, x, sigmas, eta=1., s_noise=1.):
  """DPM-Solver++(3M) in the SDE form of `sample_dpmpp_2m` (η = 0: the probability-flow ODE): the exponential
  integrator of dx̂/dλ = (1 + η)(D − x̂) + noise with D expanded to second order in λ at λ_i, its derivatives from
  the last three evaluations (Newton's divided differences; lower order on the first two steps). With H = (1 + η)h,

    x̂' = e^{−H}·x̂ + H·[φ_1(−H)·D + h·φ_2(−H)·D' + h²·φ_3(−H)·D''] + σ'·√(1 − e^{−2ηh})·s_noise·z,

  one evaluation per step; the step to σ = 0 returns D."""
  require_nonnegative(eta=eta, s_noise=s_noise)
  points = []  # (λ, D) of the last three evaluations, newest last
  for sigma, sigma_next in _pairs(sigmas):
    denoised = denoiser(x, sigma)
    if sigma_next == 0:
      return denoised
    points = (points + [(-math.log(sigma), denoised)])[-3:]
    h = math.log(sigma / sigma_next)
    exponent = (1 + eta) * h
    x = math.exp(-exponent) * x + exponent * _phi(1, exponent) * denoised
    for power, derivative in enumerate(_lambda_derivatives(points), start=1):
      if derivative is not None:
        x = x + h ** power * exponent * _phi(power + 1, exponent) * derivative
    if eta:
      x = x + _sde_noise(x, sigma_next, h, eta, s_noise)
  return x


_UNIPC_B = {'bh1': lambda h: h, 'bh2': lambda h: -math.expm1(-h)}  # B(h)


def _unipc_update(x, base, others, h, b):
  """x̂ at λ_s + h from x̂ at λ_s, D_s = D(λ_s) (base) and other (λ_k, D_k) points at r_k = (λ_k − λ_s)/h:
  e^{−h}·x̂ + (1 − e^{−h})·D_s + B(h)·Σ_k a_k·(D_k − D_s)/r_k, where Σ_k a_k·r_k^{n−1} = h·n!·φ_{n+1}(−h)/B(h)
  for n = 1 … K, K the number of other points (UniPC's order conditions). One other point takes a_1 = 1/2, the
  condition's h → 0 limit (as UniPC's authors do): the exact a_1 extrapolates twice as far over long steps."""
  lam_s, d_s = base
  x = math.exp(-h) * x - math.expm1(-h) * d_s
  if not others:
    return x
  ratios = [(lam - lam_s) / h for lam, _ in others]
  weights = [0.5] if len(ratios) == 1 else np.linalg.solve(
      [[r ** (n - 1) for r in ratios] for n in range(1, len(ratios) + 1)],
      [h * math.factorial(n) * _phi(n + 1, h) / b for n in range(1, len(ratios) + 1)]).tolist()
  return x + b * sum(w * (d - d_s) / r for w, r, (_, d) in zip(weights, ratios, others))


@register_solver('unipc')
def sample_unipc(denoiser, x, sigmas, order=2, variant='bh2', corrector=True):
  """UniPC (Zhao et al. 2023) with data prediction: the predictor UniP-p steps from the newest point using the p − 1
  before it; the corrector UniC redoes that step with the evaluation at the predicted point added (order p + 1) and
  costs nothing, as that evaluation is the next step's. One evaluation per step; B(h) = 1 − e^{−h} (bh2, the
  paper's choice for guided sampling) or h (bh1). The first steps have fewer points (order min(p, i + 1)); the step
  to σ = 0 returns D; no correction follows the last evaluation."""
  require_option(order in (1, 2, 3), 'order', order, '1, 2 or 3')
  require_option(variant in _UNIPC_B, 'variant', variant, f'one of {sorted(_UNIPC_B)}')
  points, last_step = [], None  # (λ, D) of the newest evaluations; (x̂, base, others, h, B) of the last prediction
  for sigma, sigma_next in _pairs(sigmas):
    denoised = denoiser(x, sigma)
    lam = -math.log(sigma)
    if corrector and last_step is not None and sigma_next > 0:
      x_from, base, others, h, b = last_step
      x = _unipc_update(x_from, base, others + [(lam, denoised)], h, b)
    points = (points + [(lam, denoised)])[-order:]
    if sigma_next == 0:
      return denoised
    h = math.log(sigma / sigma_next)
    last_step = (x, points[-1], points[:-1], h, _UNIPC_B[variant](h))
    x = _unipc_update(*last_step)
  return x


def sample_sigma_space(solver, denoiser, x, sigmas, options):
  """`solver` from the prior draw x: x̂ = x / s at σ_0, the solver, then x = s·x̂ at the last σ (s = 1 at σ = 0)."""
  x = solver(denoiser, x / _time_and_mean_coeff(denoiser.sde, sigmas[0])[1].item(), sigmas, **options)
  return x * _time_and_mean_coeff(denoiser.sde, sigmas[-1])[1].item()


# ---------------------------------------------------------------------------------------------
# Samplers from the config.

@dataclasses.dataclass(frozen=True)
class Method:
  """A sampler's walk `run(denoiser, x)` from the prior draw x to the sample, on `sde` (the denoiser's SDE), with
  `description` for the logs; `nfe` is its number of network evaluations, None where the step count adapts."""
  run: typing.Callable
  sde: object
  description: str
  nfe: typing.Optional[int] = None


def _count_evaluations(run, sde):
  """The network evaluations of run(denoiser, x), counted on a one-number sample with the score −x: a sampler on a
  fixed grid makes the same number whatever the values. Options out of range raise here. The CPU random state is
  restored."""
  denoiser = GuidedDenoiser(sde, lambda x, t: -x)
  with torch.random.fork_rng(devices=[]), torch.no_grad():
    run(denoiser, torch.ones(1, 1))
  return denoiser.nfe


def _sde_with_steps(sde, num_steps, continuous):
  if num_steps != sde.N and not continuous:
    raise ValueError(f'sampling.num_steps = {num_steps} differs from model.num_scales = {sde.N}, which the '
                     'discrete-time networks (training.continuous = False) are tied to')
  return sde.with_steps(num_steps)


def _check_grid(predictor, grid):
  if predictor in _SDE_STEP_PREDICTORS and grid != 'linear':
    raise ValueError(f'predictor {predictor!r} steps by the SDE\'s own discretisation: it needs sampling.grid = '
                     f'linear (its N = sampling.num_steps points), not {grid!r}')


def _pc_method(config, sde, eps):
  s = config.sampling
  pc = PCSettings(s.predictor.lower(), s.corrector.lower(), s.snr, s.n_steps_each, s.probability_flow,
                  s.noise_removal)
  if pc.predictor == 'adaptive':
    return Method(functools.partial(sample_adaptive, eps=eps, pc=pc), sde,
                  f'adaptive/{pc.corrector} (snr={pc.snr:g}, n_steps_each={pc.n_steps_each}), adaptive NFE')
  _check_grid(pc.predictor, s.grid)
  num_steps = s.num_steps or sde.N
  sde = _sde_with_steps(sde, num_steps, config.training.continuous)
  times = time_grids.time_grid(s.grid, sde, num_steps, eps, s.rho)
  run = functools.partial(sample_pc, times=times, pc=pc)
  nfe = _count_evaluations(run, sde)
  return Method(run, sde, f'pc {pc.predictor}/{pc.corrector} (snr={pc.snr:g}, n_steps_each={pc.n_steps_each}, '
                          f'probability_flow={pc.probability_flow}) on the {s.grid} grid, {num_steps} steps, '
                          f'{nfe} NFE', nfe)


def _ode_method(config, sde, eps):
  s = config.sampling
  require_option(s.ode_rtol > 0, 'ode_rtol', s.ode_rtol, 'a number > 0')
  require_option(s.ode_atol > 0, 'ode_atol', s.ode_atol, 'a number > 0')
  run = functools.partial(sample_ode, eps=eps, rtol=s.ode_rtol, atol=s.ode_atol, denoise=s.noise_removal)
  return Method(run, sde, f'ode (RK45, rtol={s.ode_rtol:g}, atol={s.ode_atol:g}), adaptive NFE')


def _solver_method(config, sde, eps):
  s = config.sampling
  name = s.method.lower()
  solver, options = get_solver(name), dict(s.get(name, {}))
  num_steps = s.num_steps or sde.N
  sigmas = time_grids.sigma_grid(s.grid, sde, num_steps, eps, s.rho, to_zero=s.noise_removal)
  run = functools.partial(sample_sigma_space, solver, sigmas=sigmas, options=options)
  try:
    nfe = _count_evaluations(run, sde)
  except OptionError as error:
    raise ValueError(f'sampling.{name}.{error}') from None
  settings = ', '.join(f'{key}={value}' for key, value in options.items())
  end = 'σ = 0' if s.noise_removal else f'σ = {sigmas[-1]:.3g}'
  return Method(run, sde, f'{name} ({settings}) on the {s.grid} grid (rho={s.rho:g}), {len(sigmas) - 1} steps to '
                          f'{end}, {nfe} NFE', nfe)


def build_method(config, sde, eps):
  """The Method of config.sampling.method: 'pc' (predictor, corrector; predictor 'adaptive': the adaptive loop),
  'ode', or a σ-space solver with its options config.sampling.<method>, on sampling.grid with sampling.num_steps
  points (0: the SDE's N). Options out of range raise a one-line ValueError naming the field."""
  method = config.sampling.method.lower()
  builder = {'pc': _pc_method, 'ode': _ode_method}.get(method)
  if builder is None and method not in _SOLVERS:
    raise ValueError(f'unknown sampling.method {config.sampling.method!r}; known: pc, ode and {sorted(_SOLVERS)}')
  try:
    return (builder or _solver_method)(config, sde, eps)
  except OptionError as error:
    raise ValueError(f'sampling.{error}') from None


def network_settings(config):
  """NetworkSettings from config.training.continuous and config.sampling (dtype, classifier_dtype, compile)."""
  s = config.sampling
  for field in ('dtype', 'classifier_dtype'):
    if s[field] not in ('float32', 'bfloat16'):
      raise ValueError(f'sampling.{field}={s[field]!r}: must be float32 or bfloat16')
  return NetworkSettings(continuous=config.training.continuous, dtype=getattr(torch, s.dtype),
                         classifier_dtype=getattr(torch, s.classifier_dtype), compile=bool(s.compile))


def _as_labels(labels, batch_size, device):
  """One target class per sample (a tensor, a list or one int) as an int64 tensor of length batch_size."""
  if labels is None:
    return None
  return torch.as_tensor(labels, device=device).long().expand(batch_size)


class Sampler:
  """`sampler(score_model, classifier_model=None, labels=None, z=None) -> (samples, nfe)`: guided (when conditional)
  samples from the prior draw (or `z`) on `device`, nfe counting the network evaluations made. `nfe` (known before
  sampling; None where the steps adapt) and `description` say what it does."""

  def __init__(self, method, guidance, networks, shape, inverse_scaler, conditional, device):
    self.method, self.guidance, self.networks = method, guidance, networks
    self.shape, self.inverse_scaler, self.conditional = shape, inverse_scaler, conditional
    self.device = torch.device(device)
    self.nfe = method.nfe
    where = '' if guidance.everywhere else f', guided where {guidance.sigma_min:g} ≤ σ ≤ {guidance.sigma_max:g}'
    self.description = method.description + where

  def __call__(self, score_model, classifier_model=None, labels=None, z=None):
    if not self.conditional:
      classifier_model, labels = None, None
    elif classifier_model is None or labels is None:
      raise ValueError('sampling.conditional is set: pass a classifier and the target classes')
    denoiser = build_denoiser(self.method.sde, score_model, classifier_model,
                              _as_labels(labels, self.shape[0], self.device), self.guidance, self.networks)
    with torch.no_grad(), _FrozenParameters(score_model, classifier_model):
      x = self.method.sde.prior_sampling(self.shape).to(self.device) if z is None else z.to(self.device)
      x = self.method.run(denoiser, x)
    return self.inverse_scaler(x), denoiser.nfe


def get_sampling_fn(config, sde, shape, inverse_scaler, eps):
  """The sampler of `config.sampling`, its options checked: a `Sampler`, fn(score_model, classifier_model=None,
  labels=None, z=None) -> (samples, nfe).

  As in the original, guidance follows `config.sampling.conditional`: when True a classifier and labels are
  required; when False the sampler is unguided and ignores them. The guidance scale is sampling.scaling_factor,
  applied where sampling.guided_sigma_min ≤ σ ≤ sampling.guided_sigma_max.
  """
  s = config.sampling
  guidance = Guidance(float(s.scaling_factor), s.guided_sigma_min, s.guided_sigma_max)
  return Sampler(build_method(config, sde, eps), guidance, network_settings(config), shape, inverse_scaler,
                 s.conditional, mutils.get_device(config))
