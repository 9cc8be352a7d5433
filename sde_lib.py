"""Forward SDEs (VE, VP, sub-VP) and their reverse-time counterparts (spec §1.3–1.5, §1.9, §3.9.1).

Float32 arithmetic follows the original expression by expression, so results match it bit for bit.
Per-sample quantities (shape (B,)) broadcast over the trailing dimensions of any input (B, ...).
"""
import abc

import numpy as np
import torch


def batch_broadcast(values, x):
  """Reshape per-sample values (B,) so they broadcast against x of shape (B, ...)."""
  return values.reshape(values.shape + (1,) * (x.dim() - values.dim()))


def _sum_over_sample(z):
  return torch.sum(z, dim=tuple(range(1, z.dim())))


class SDE(abc.ABC):
  """A forward SDE dx = f(x,t) dt + g(t) dw on t ∈ [0, T], discretised with N steps."""

  def __init__(self, N):
    self.N = N

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

  @abc.abstractmethod
  def prior_logp(self, z):
    """Log-density of the prior at z, one value per sample."""

  def mean_coeff(self, t):
    """s(t), the mean of p_t(x(t) | x(0)) being s(t)·x(0): 1 unless a subclass says so."""
    return torch.ones_like(t)

  def sigma(self, t):
    """The noise-to-signal ratio σ(t) = std / s(t): VE's σ(t), sqrt(e^{−2m} − 1) for VP, (1 − e^{2m}) / e^{m} for sub-VP."""
    return self.marginal_std(t) / self.mean_coeff(t)

  def time_of_sigma(self, sigma):
    """The time t with σ(t) = sigma (the inverse of `sigma`)."""
    raise NotImplementedError(f'{type(self).__name__} does not invert σ(t)')

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
  """drift_rev = f − g²·score·κ, diffusion_rev = g (SDE) or 0 (flow), κ = ½ for the flow (spec §1.9)."""

  def __init__(self, forward_sde, score_fn, probability_flow=False):
    self.forward_sde = forward_sde
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward_sde.N

  @property
  def T(self):
    return self.forward_sde.T

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


class VPSDE(SDE):
  """Variance-preserving SDE (DDPM in continuous time)."""

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
    self.alphas = 1. - self.discrete_betas
    self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
    self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = torch.sqrt(1. - self.alphas_cumprod)

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t):
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def sde(self, x, t):
    beta_t = self.beta(t)
    drift = -0.5 * batch_broadcast(beta_t, x) * x
    return drift, torch.sqrt(beta_t)

  def marginal_std(self, t):
    return torch.sqrt(1. - torch.exp(2. * self.log_mean_coeff(t)))

  def marginal_prob(self, x, t):
    mean = torch.exp(batch_broadcast(self.log_mean_coeff(t), x)) * x
    return mean, self.marginal_std(t)

  def prior_sampling(self, shape):
    return torch.randn(*shape)

  def prior_logp(self, z):
    dim = np.prod(z.shape[1:])
    return -dim / 2. * np.log(2 * np.pi) - _sum_over_sample(z ** 2) / 2.

  def mean_coeff(self, t):
    return torch.exp(self.log_mean_coeff(t))

  def time_of_sigma(self, sigma):
    """σ² = e^{−2m(t)} − 1, so m = −½·log(1 + σ²)."""
    return _time_of_log_mean_coeff(self, -0.5 * torch.log1p(sigma ** 2))

  def discretize(self, x, t):
    """DDPM discretisation: f = sqrt(α_k)·x − x, G = sqrt(β_k)."""
    k = self.timestep_index(t)
    beta = self.discrete_betas.to(x.device)[k]
    alpha = self.alphas.to(x.device)[k]
    f = batch_broadcast(torch.sqrt(alpha), x) * x - x
    return f, torch.sqrt(beta)


class subVPSDE(SDE):
  """Sub-VP SDE; its marginal std is 1 − e^{2m(t)} (no square root) and it has no discrete tables."""

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t):
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def sde(self, x, t):
    beta_t = self.beta(t)
    drift = -0.5 * batch_broadcast(beta_t, x) * x
    discount = 1. - torch.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return drift, torch.sqrt(beta_t * discount)

  def marginal_std(self, t):
    return 1 - torch.exp(2. * self.log_mean_coeff(t))

  def mean_coeff(self, t):
    return torch.exp(self.log_mean_coeff(t))

  def time_of_sigma(self, sigma):
    """σ = e^{−m(t)} − e^{m(t)} = 2·sinh(−m), so m = −asinh(σ / 2)."""
    return _time_of_log_mean_coeff(self, -torch.asinh(sigma / 2))

  def marginal_prob(self, x, t):
    mean = batch_broadcast(torch.exp(self.log_mean_coeff(t)), x) * x
    return mean, self.marginal_std(t)

  def prior_sampling(self, shape):
    return torch.randn(*shape)

  def prior_logp(self, z):
    dim = np.prod(z.shape[1:])
    return -dim / 2. * np.log(2 * np.pi) - _sum_over_sample(z ** 2) / 2.


class VESDE(SDE):
  """Variance-exploding SDE (SMLD in continuous time): σ(t) = σ_min·(σ_max/σ_min)^t."""

  def __init__(self, sigma_min=0.01, sigma_max=50, N=1000):
    super().__init__(N)
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    # Ascending float32 table σ_k = exp(linspace(ln σ_min, ln σ_max, N)).
    self.discrete_sigmas = torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), N))

  def sde(self, x, t):
    sigma = self.marginal_std(t)
    log_ratio = 2 * (np.log(self.sigma_max) - np.log(self.sigma_min))
    diffusion = sigma * torch.sqrt(torch.tensor(log_ratio, device=t.device))
    return torch.zeros_like(x), diffusion

  def marginal_std(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def marginal_prob(self, x, t):
    return x, self.marginal_std(t)

  def prior_sampling(self, shape):
    return torch.randn(*shape) * self.sigma_max

  def prior_logp(self, z):
    dim = np.prod(z.shape[1:])
    return (-dim / 2. * np.log(2 * np.pi * self.sigma_max ** 2)
            - _sum_over_sample(z ** 2) / (2 * self.sigma_max ** 2))

  def time_of_sigma(self, sigma):
    """t = ln(σ / σ_min) / ln(σ_max / σ_min)."""
    return torch.log(sigma / self.sigma_min) / np.log(self.sigma_max / self.sigma_min)

  def discretize(self, x, t):
    """SMLD discretisation: f = 0, G = sqrt(σ_k² − σ_{k−1}²) with σ_{−1} = 0."""
    k = self.timestep_index(t)
    sigmas = self.discrete_sigmas.to(t.device)  # both lookups on the device of t (B40)
    sigma = sigmas[k]
    adjacent_sigma = torch.where(k == 0, torch.zeros_like(t), sigmas[k - 1])
    G = torch.sqrt(sigma ** 2 - adjacent_sigma ** 2)
    return torch.zeros_like(x), G


def _time_of_log_mean_coeff(sde, m):
  """The t ≥ 0 with m(t) = −¼t²(β₁ − β₀) − ½tβ₀ = m: t = (−β₀ + sqrt(β₀² − 4(β₁ − β₀)m)) / (β₁ − β₀)."""
  spread = sde.beta_1 - sde.beta_0
  return (torch.sqrt(sde.beta_0 ** 2 - 4 * spread * m) - sde.beta_0) / spread


SAMPLING_EPS = {'vesde': 1e-5, 'vpsde': 1e-3, 'subvpsde': 1e-3}


def get_sde(config):
  """The SDE named by config.training.sde and its sampling eps (1e-5 VE, 1e-3 VP / sub-VP)."""
  name = config.training.sde.lower()
  N = config.model.num_scales
  if name == 'vesde':
    sde = VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, N=N)
  elif name == 'vpsde':
    sde = VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=N)
  elif name == 'subvpsde':
    sde = subVPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=N)
  else:
    raise ValueError(f"training.sde = {config.training.sde!r} is unknown; use one of {sorted(SAMPLING_EPS)}")
  return sde, SAMPLING_EPS[name]
