"""Moons samplers: the corrected annealed PC sampler (the shared sampling.sample_pc) and the original's."""
import math

import torch

import registry
import sampling
import sde_lib
import time_grids
from toy import full_sigma

SAMPLERS = {}  # config.sampling.method -> fn(score_fn, classifier_fn, label, scale, num_samples, config, device)
register_toy_sampler = registry.decorator_for(SAMPLERS)


def annealed_sampler_sde(sigma_end, sigma_max, sigma_extra_min, num_steps):
  """VE SDE of the noise added on top of sigma_end: the networks see sqrt(sigma_end² + sigma(t)²).

  Its reverse process anneals the networks' noise level from sigma_max down to sigma_end, so the sampler
  draws from p_{sigma_end}(x | y), the distribution the metrics and the PRDC reference set refer to.
  """
  extra_max = math.sqrt(sigma_max ** 2 - sigma_end ** 2)
  return sde_lib.VESDE(sigma_min=sigma_extra_min, sigma_max=extra_max, N=num_steps)


@register_toy_sampler('annealed_pc')
def sample_annealed_pc(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """Corrected annealed PC sampler (T1 fixed) = sampling.sample_pc on `annealed_sampler_sde`: sigma decreases,
  reverse-diffusion predictor with step sigma_i² - sigma_{i+1}², Langevin corrector with step delta and noise
  sqrt(2 delta), guided by sampling.get_guided_score_fn (through sampling.GuidedDenoiser)."""
  settings = config.sampling
  sigma_end = config.model.std
  sde = annealed_sampler_sde(sigma_end, config.model.sigma_max, settings.sigma_extra_min, settings.num_steps)

  def at_time(fn):  # noise-level function -> function of the sampler's time
    return None if fn is None else (lambda x, t: fn(x, torch.sqrt(sde.marginal_std(t) ** 2 + sigma_end ** 2)))

  labels = None if classifier_fn is None else torch.full((num_samples,), label, dtype=torch.long, device=device)
  denoiser = sampling.GuidedDenoiser(sde, at_time(score_fn), at_time(classifier_fn), labels, sampling.Guidance(scale))
  pc = sampling.PCSettings(settings.predictor, settings.corrector, settings.snr, settings.n_steps_each,
                           denoise=settings.noise_removal)
  with torch.no_grad():
    x = sde.prior_sampling((num_samples, 2)).to(device)
    return sampling.sample_pc(denoiser, x, time_grids.time_grid('linear', sde, sde.N, settings.eps), pc)


@register_toy_sampler('original')
@torch.no_grad()
def sample_original(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """The original toy sampler (bug T1 kept): sigma increases geometrically from sigma_min towards sigma_max over
  the steps, the predictor step is exactly zero (omitted), x0 ~ N(0, I), and the corrector moves by
  sqrt(2 epsilon)·ŝ with noise epsilon·noise_std·z — not a consistent Langevin pair. The guidance uses
  log softmax without the 1e-8 (T3)."""
  settings = config.sampling
  sigma_min, sigma_max = config.model.sigma_min, config.model.sigma_max
  labels = torch.full((num_samples,), label, dtype=torch.long, device=device)
  posterior = sampling.get_guided_score_fn(score_fn, classifier_fn, labels, scale, eps=0.)
  x = torch.randn(num_samples, 2, device=device)
  for i in range(settings.num_steps):
    score = posterior(x, full_sigma(x, sigma_min * (sigma_max / sigma_min) ** (i / settings.num_steps)))
    x = x + math.sqrt(2 * settings.epsilon) * score + settings.epsilon * settings.noise_std * torch.randn_like(x)
  return x


def sample_class(score_fn, classifier_fn, label, scale, num_samples, config, device):
  """num_samples points [num_samples, 2] of class `label` from the posterior score_fn + scale ∇ log p(label | x)
  (classifier_fn None: score_fn alone) with the sampler named by config.sampling.method."""
  if config.sampling.method not in SAMPLERS:
    raise ValueError(f'config.sampling.method must be one of {sorted(SAMPLERS)}, not {config.sampling.method!r}')
  return SAMPLERS[config.sampling.method](score_fn, classifier_fn, label, scale, num_samples, config, device)
