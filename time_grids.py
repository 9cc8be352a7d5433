"""Time grids of the samplers: N decreasing times t_0 = T > … > t_{N−1} = eps, then t_N = 0.

Every sampler step goes from t_i to t_{i+1}. The final t_N = 0 is the noise-free end: the last step removes the
remaining noise (σ → 0), as the original's last reverse-diffusion step does with its σ_{−1} = 0.
Grids are float32 and computed on the CPU, so every device walks the same times. The σ-space solvers walk the same
grid in σ, the SDE's noise-to-signal ratio std / mean (`sigma_grid`).
"""
import torch

import registry

_GRIDS = {}


# A grid is `grid(sde, num_steps, eps, rho) -> the N times t_0 = T … t_{N−1} = eps` (float32, CPU).
register_grid = registry.decorator_for(_GRIDS)


@register_grid('linear')
def linear_grid(sde, num_steps, eps, rho=None):
  """t_i = linspace(T, eps, N): the original's grid (ρ unused)."""
  return torch.linspace(sde.T, eps, num_steps)


def _times_of_sigmas(sde, sigmas, ends):
  """The float32 times of float64 σ values from σ(T) to σ(eps), with the exact endpoints despite the round trip."""
  times = sde.time_of_sigma(sigmas)
  times[0], times[-1] = ends
  return times.float()


def _sigma_ends(sde, eps):
  ends = torch.tensor([float(sde.T), eps], dtype=torch.float64)
  return ends, sde.sigma(ends).tolist()


@register_grid('rho')
def rho_grid(sde, num_steps, eps, rho=7.):
  """σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ between σ(T) and σ(eps), mapped back to time.

  ρ = 7 spends the steps where σ is small (Karras et al. 2022)."""
  ends, (sigma_max, sigma_min) = _sigma_ends(sde, eps)
  fraction = torch.linspace(0, 1, num_steps, dtype=torch.float64)
  sigmas = (sigma_max ** (1 / rho) + fraction * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return _times_of_sigmas(sde, sigmas, ends)


@register_grid('logsnr')
def logsnr_grid(sde, num_steps, eps, rho=None):
  """log σ evenly spaced between σ(T) and σ(eps): the logSNR-uniform grid of DPM-Solver (logSNR = −2·log σ; ρ
  unused). For VE it is the linear grid in t."""
  ends, (sigma_max, sigma_min) = _sigma_ends(sde, eps)
  log_sigmas = torch.linspace(torch.tensor(sigma_max).log(), torch.tensor(sigma_min).log(), num_steps,
                              dtype=torch.float64)
  return _times_of_sigmas(sde, log_sigmas.exp(), ends)


def grid_names():
  return sorted(_GRIDS)


def time_grid(name, sde, num_steps, eps, rho=7.):
  """The N + 1 times of grid `name`: its N times, then t_N = 0."""
  if name not in _GRIDS:
    raise ValueError(f'unknown sampling.grid {name!r}; known: {grid_names()}')
  if num_steps < 2:
    raise ValueError(f'sampling.num_steps = {num_steps}; use at least 2')
  times = _GRIDS[name](sde, num_steps, eps, rho)
  return torch.cat([times, torch.zeros(1)])


def sigma_grid(name, sde, num_steps, eps, rho=7., to_zero=True):
  """σ at the times of grid `name` (float64): σ(t_0) … σ(t_{N−1}), then σ = 0 when `to_zero` (N steps; else N − 1
  steps ending at σ(eps))."""
  times = time_grid(name, sde, num_steps, eps, rho)[:-1].double()
  sigmas = sde.sigma(times)
  return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]) if to_zero else sigmas
