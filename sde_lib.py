"""Forward SDEs (VE, VP, sub-VP), their reverse-time counterparts, and everything the rest of the code asks of an SDE.

Each SDE class answers, through methods, what the networks receive as time (`network_time`, `classifier_time`), how a
network output becomes a score (`score_from_output`), the Langevin step factor α (`langevin_alpha`), its ancestral step,
its discrete tables on a device (`table`), the end of its sampling time range (`sampling_eps`) and its legacy discrete
loss (`discrete_loss`). Adding an SDE means one class here and its `@register_sde` line; no other module changes.

Float32 arithmetic follows the original expression by expression, so results match it bit for bit.
Per-sample quantities (shape (B,)) broadcast over the trailing dimensions of any input (B, ...).
"""
import abc

import numpy as np
import torch

import registry

_SDES = {}


# Class decorator: makes the SDE available as config.training.sde = name (built by its `from_config`).
register_sde = registry.decorator_for(_SDES)


def batch_broadcast(values, x):
  """Reshape per-sample values (B,) so they broadcast against x of shape (B, ...)."""
  return values.reshape(values.shape + (1,) * (x.dim() - values.dim()))


def _sum_over_sample(z):
  return torch.sum(z, dim=tuple(range(1, z.dim())))


class SDE(abc.ABC):
  """A forward SDE dx = f(x,t) dt + g(t) dw on t ∈ [0, T], discretised with N steps."""

  sampling_eps = 1e-5  # end of the sampling grid linspace(T, eps, N) and of the classifier's training range U(eps, T)
  discrete_loss = None  # name of the legacy loss of training.continuous = False ('smld', 'ddpm'), if any
  has_ancestral_step = False  # True where `ancestral_step` is defined

  def __init__(self, N):
    self.N = N
    self._device_tables = {}

  config_fields = ()  # the config.model fields holding the constructor's arguments before N, in order

  @classmethod
  def from_config(cls, config):
    """The SDE with the parameters of config.model: its config_fields, then num_scales as N."""
    return cls(*(config.model[field] for field in cls.config_fields), N=config.model.num_scales)

  @property
  def T(self):
    return 1

  @abc.abstractmethod
  def sde(self, x, t):
    """Drift f(x,t) (shape of x) and diffusion g(t) (shape (B,))."""

  @abc.abstractmethod
  def marginal_std(self, t):
    """Standard deviation σ(t) of p_t(x(t) | x(0)), shape (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Mean and std of p_t(x(t) | x(0) = x)."""

  @abc.abstractmethod
  def prior_sampling(self, shape):
    """One draw from the prior p_T (a single torch.randn call)."""

  def prior_logp(self, z):
    """Log-density of the prior at z, one value per sample. Kept from score_sde (its likelihood computation); no
    sampler or loss here reads it."""
    raise NotImplementedError(f'{type(self).__name__} has no prior log-density')

  @abc.abstractmethod
  def network_time(self, t, continuous=True):
    """What the score network receives as its second input at time t."""

  @abc.abstractmethod
  def score_from_output(self, output, t, continuous=True):
    """The score s(x, t) given the score network's output at (x, network_time(t))."""

  def classifier_time(self, t, continuous=True):
    """What the noise-conditioned classifier receives at time t: the continuous network time."""
    return self.network_time(t, continuous=True)

  def langevin_alpha(self, t):
    """Per-sample factor α of the Langevin / annealed-Langevin step size 2α(snr·…)²: 1 unless a subclass says so."""
    return torch.ones_like(t)

  def mean_coeff(self, t):
    """s(t), the mean of p_t(x(t) | x(0)) being s(t)·x(0): 1 unless a subclass says so."""
    return torch.ones_like(t)

  def sigma(self, t):
    """The noise-to-signal ratio σ(t) = std / s(t) the grid samplers step in (VE: its σ(t))."""
    return self.marginal_std(t) / self.mean_coeff(t)

  def time_of_sigma(self, sigma):
    """The time t with σ(t) = sigma, the inverse of `sigma`."""
    raise NotImplementedError(f'{type(self).__name__} does not invert σ(t)')

  def with_steps(self, num_steps):
    """The same SDE discretised with num_steps steps (its N), for the steps and tables of the original predictors and
    correctors; continuous-time networks do not depend on N."""
    if num_steps == self.N:
      return self
    return type(self)(*self.parameters, N=num_steps)

  @property
  def parameters(self):
    """The constructor's arguments before N."""
    raise NotImplementedError(f'{type(self).__name__} cannot change its N')

  def ancestral_step(self, x, score, t):
    """One ancestral-sampling step (x, x_mean) from x at t with the given score."""
    raise NotImplementedError(f'{type(self).__name__} has no ancestral step (VESDE and VPSDE have one)')

  def table(self, name, device):
    """The discrete table attribute `name` on `device`, copied there once (indices live on the inputs' device, B40)."""
    key = (name, torch.device(device))
    if key not in self._device_tables:
      self._device_tables[key] = getattr(self, name).to(device)
    return self._device_tables[key]

  def table_at(self, name, t):
    """Entry k = trunc(t·(N−1)/T) of the discrete table `name`, per sample, on the device of t."""
    return self.table(name, t.device)[self.timestep_index(t)]

  def discretize(self, x, t):
    """Euler–Maruyama step x_{i+1} = x_i + f_i + G_i z in forward time (generic form)."""
    dt = 1 / self.N
    drift, diffusion = self.sde(x, t)
    f = drift * dt
    G = diffusion * torch.sqrt(torch.tensor(dt, device=t.device))
    return f, G

  def timestep_index(self, t):
    """Discrete index k = trunc(t·(N−1)/T), computed in the dtype of t (float32)."""
    return (t * (self.N - 1) / self.T).long()

  def reverse(self, score_fn, probability_flow=False):
    """Reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t), which may include guidance."""
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """drift_rev = f − κ·g²·score, diffusion_rev = g (SDE) or 0 (probability-flow ODE), with κ = 1 or ½."""

  def __init__(self, forward_sde, score_fn, probability_flow=False):
    self.forward_sde = forward_sde
    self.score_fn = score_fn
    self.probability_flow = probability_flow

  @property
  def score_weight(self):
    return 0.5 if self.probability_flow else 1.

  def sde(self, x, t):
    drift, diffusion = self.forward_sde.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - batch_broadcast(diffusion, x) ** 2 * score * self.score_weight
    # A zero tensor (not the original's Python 0.) keeps per-sample broadcasting working (B31).
    diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
    return drift, diffusion

  def discretize(self, x, t):
    f, G = self.forward_sde.discretize(x, t)
    rev_f = f - batch_broadcast(G, x) ** 2 * self.score_fn(x, t) * self.score_weight
    rev_G = torch.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


class LinearBetaSDE(SDE):
  """Shared part of VP and sub-VP: β(t) = β₀ + t(β₁ − β₀), mean e^{m(t)}·x, a N(0, I) prior, networks that see 999·t
  and predict the noise (score = −output / std), and the float32 tables β_k = linspace(β₀/N, β₁/N, N), α_k = 1 − β_k."""

  sampling_eps = 1e-3
  config_fields = ('beta_min', 'beta_max')

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
    self.alphas = 1. - self.discrete_betas

  @property
  def parameters(self):
    return self.beta_0, self.beta_1

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t):
    """m(t) = −¼t²(β₁ − β₀) − ½tβ₀."""
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def drift(self, x, t):
    return -0.5 * batch_broadcast(self.beta(t), x) * x

  def mean_coeff(self, t):
    return torch.exp(self.log_mean_coeff(t))

  def time_of_log_mean_coeff(self, m):
    """The t ≥ 0 with m(t) = m: t = (−β₀ + sqrt(β₀² − 4(β₁ − β₀)m)) / (β₁ − β₀)."""
    spread = self.beta_1 - self.beta_0
    return (torch.sqrt(self.beta_0 ** 2 - 4 * spread * m) - self.beta_0) / spread

  def marginal_prob(self, x, t):
    mean = batch_broadcast(torch.exp(self.log_mean_coeff(t)), x) * x
    return mean, self.marginal_std(t)

  def prior_sampling(self, shape):
    return torch.randn(*shape)

  def prior_logp(self, z):
    dim = np.prod(z.shape[1:])
    return -dim / 2. * np.log(2 * np.pi) - _sum_over_sample(z ** 2) / 2.

  def network_time(self, t, continuous=True):
    return t * 999  # the literal 999 of the original, not N − 1

  def score_from_output(self, output, t, continuous=True):
    return -output / batch_broadcast(self.marginal_std(t), output)

  def langevin_alpha(self, t):
    """α_k = 1 − β_k at k = trunc(t·(N−1)); sub-VP uses the same table built from its β (the original crashed, B31)."""
    return self.table_at('alphas', t)


@register_sde('vpsde')
class VPSDE(LinearBetaSDE):
  """Variance-preserving SDE (DDPM in continuous time): σ(t) = sqrt(1 − e^{2m(t)})."""

  discrete_loss = 'ddpm'
  has_ancestral_step = True

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(beta_min, beta_max, N)
    self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
    self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = torch.sqrt(1. - self.alphas_cumprod)

  def sde(self, x, t):
    return self.drift(x, t), torch.sqrt(self.beta(t))

  def marginal_std(self, t):
    return torch.sqrt(1. - torch.exp(2. * self.log_mean_coeff(t)))

  def time_of_sigma(self, sigma):
    """σ² = e^{−2m(t)} − 1, so m = −½·ln(1 + σ²)."""
    return self.time_of_log_mean_coeff(-0.5 * torch.log1p(sigma ** 2))

  def network_time(self, t, continuous=True):
    """999·t, or the float (not rounded) t·(N − 1) when discrete."""
    return super().network_time(t) if continuous else t * (self.N - 1)

  def classifier_time(self, t, continuous=True):
    if not continuous:
      raise NotImplementedError('A classifier on the discrete VP SDE is not supported (as in the original).')
    return super().classifier_time(t)

  def score_from_output(self, output, t, continuous=True):
    """−output / std, the std being sqrt(1 − ᾱ_k) from the float32 table when discrete."""
    if continuous:
      return super().score_from_output(output, t)
    return -output / batch_broadcast(self.table_at('sqrt_1m_alphas_cumprod', t), output)

  def discretize(self, x, t):
    """DDPM discretisation: f = sqrt(α_k)·x − x, G = sqrt(β_k)."""
    alpha, beta = self.table_at('alphas', t), self.table_at('discrete_betas', t)
    f = batch_broadcast(torch.sqrt(alpha), x) * x - x
    return f, torch.sqrt(beta)

  def ancestral_step(self, x, score, t):
    """DDPM ancestral step: x_mean = (x + β_k·s) / sqrt(1 − β_k), x = x_mean + sqrt(β_k)·z."""
    beta = self.table_at('discrete_betas', t)
    x_mean = (x + batch_broadcast(beta, x) * score) / batch_broadcast(torch.sqrt(1. - beta), x)
    noise = torch.randn_like(x)
    return x_mean + batch_broadcast(torch.sqrt(beta), x) * noise, x_mean


@register_sde('subvpsde')
class subVPSDE(LinearBetaSDE):
  """Sub-VP SDE: g(t)² = β(t)(1 − e^{−2β₀t − (β₁−β₀)t²}); σ(t) = 1 − e^{2m(t)} (no square root).

  It has no tables of its own and discretises by Euler–Maruyama; its networks always see 999·t."""

  def sde(self, x, t):
    discount = 1. - torch.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return self.drift(x, t), torch.sqrt(self.beta(t) * discount)

  def marginal_std(self, t):
    return 1 - torch.exp(2. * self.log_mean_coeff(t))

  def time_of_sigma(self, sigma):
    """σ = (1 − e^{2m}) / e^{m} = 2·sinh(−m), so m = −asinh(σ / 2)."""
    return self.time_of_log_mean_coeff(-torch.asinh(sigma / 2))


@register_sde('vesde')
class VESDE(SDE):
  """Variance-exploding SDE (SMLD in continuous time): σ(t) = σ_min·(σ_max/σ_min)^t; the network output is the score."""

  discrete_loss = 'smld'
  has_ancestral_step = True
  config_fields = ('sigma_min', 'sigma_max')

  def __init__(self, sigma_min=0.01, sigma_max=50, N=1000):
    super().__init__(N)
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    # Ascending float32 table σ_k = exp(linspace(ln σ_min, ln σ_max, N)).
    self.discrete_sigmas = torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), N))

  @property
  def parameters(self):
    return self.sigma_min, self.sigma_max

  def sde(self, x, t):
    sigma = self.marginal_std(t)
    log_ratio = 2 * (np.log(self.sigma_max) - np.log(self.sigma_min))
    diffusion = sigma * torch.sqrt(torch.tensor(log_ratio, device=t.device))
    return torch.zeros_like(x), diffusion

  def marginal_std(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def marginal_prob(self, x, t):
    return x, self.marginal_std(t)

  def time_of_sigma(self, sigma):
    """t = ln(σ / σ_min) / ln(σ_max / σ_min)."""
    return torch.log(sigma / self.sigma_min) / np.log(self.sigma_max / self.sigma_min)

  def prior_sampling(self, shape):
    return torch.randn(*shape) * self.sigma_max

  def prior_logp(self, z):
    dim = np.prod(z.shape[1:])
    return (-dim / 2. * np.log(2 * np.pi * self.sigma_max ** 2)
            - _sum_over_sample(z ** 2) / (2 * self.sigma_max ** 2))

  def network_time(self, t, continuous=True):
    """σ(t), or round((T − t)(N − 1)) as int64 when discrete (round half to even; t = T gives 0, i.e. σ_max)."""
    if continuous:
      return self.marginal_std(t)
    return torch.round((self.T - t) * (self.N - 1)).long()

  def score_from_output(self, output, t, continuous=True):
    return output

  def adjacent_sigmas(self, t):
    """(σ_k, σ_{k−1}) per sample at k = trunc(t·(N−1)), with σ_{−1} = 0, both from the table on t's device."""
    k = self.timestep_index(t)
    sigmas = self.table('discrete_sigmas', t.device)
    return sigmas[k], torch.where(k == 0, torch.zeros_like(t), sigmas[k - 1])

  def discretize(self, x, t):
    """SMLD discretisation: f = 0, G = sqrt(σ_k² − σ_{k−1}²)."""
    sigma, adjacent_sigma = self.adjacent_sigmas(t)
    return torch.zeros_like(x), torch.sqrt(sigma ** 2 - adjacent_sigma ** 2)

  def ancestral_step(self, x, score, t):
    """SMLD ancestral step: x_mean = x + (σ² − σ'²)·s, x = x_mean + sqrt(σ'²(σ² − σ'²)/σ²)·z (σ = σ_k, σ' = σ_{k−1})."""
    sigma, adjacent_sigma = self.adjacent_sigmas(t)
    x_mean = x + score * batch_broadcast(sigma ** 2 - adjacent_sigma ** 2, x)
    std = torch.sqrt((adjacent_sigma ** 2 * (sigma ** 2 - adjacent_sigma ** 2)) / (sigma ** 2))
    noise = torch.randn_like(x)
    return x_mean + batch_broadcast(std, x) * noise, x_mean


def get_sde(config):
  """The SDE named by config.training.sde and its sampling eps (1e-5 VE, 1e-3 VP / sub-VP)."""
  name = config.training.sde.lower()
  if name not in _SDES:
    raise ValueError(f"training.sde = {config.training.sde!r} is unknown; use one of {sorted(_SDES)}")
  sde = _SDES[name].from_config(config)
  return sde, sde.sampling_eps
