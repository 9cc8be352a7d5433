"""Exact scores of equal-weight Gaussian mixtures: the noisy empirical distribution p_σ(x̃) = mean_j N(x̃; x_j, σ²I).

One module for every oracle of the project: the toy's (moons), the digits posterior-score metrics (the training
digits of a class are the centres of p_σ(x̃ | y)) and the exact draws the samplers are judged against.
Everything is float64. With equal-weight components the score is a softmax-weighted mean:
  ∇ log p_σ(x̃) = Σ_j w_j(x̃) (x_j − x̃) / σ²,   w_j = softmax_j(−‖x̃ − x_j‖² / 2σ²),
and ∇ log p_σ(y | x̃) = ∇ log p_σ(x̃ | y) − ∇ log p_σ(x̃) whatever the class priors are.
"""
import math

import torch


def squared_distances(x, centres):
  """‖x_i − c_j‖² [P, M] in float64, through one matrix product (exact to ~1e-15 relative at these sizes)."""
  x, centres = x.reshape(len(x), -1), centres.reshape(len(centres), -1)
  distances = (x ** 2).sum(1, keepdim=True) + (centres ** 2).sum(1) - 2 * x @ centres.T
  return distances.clamp_min(0.)


def log_mean_density(log_components, dimension, variance):
  """log mean_j N_j [P, 1] from the components' exponents −‖x − c_j‖²/2σ² [P, M] (normalised d-dimensional
  Gaussians of variance σ², one per row or shared)."""
  variance = torch.as_tensor(variance, dtype=torch.float64)
  return (torch.logsumexp(log_components, dim=1, keepdim=True) - math.log(log_components.shape[1])
          - 0.5 * dimension * torch.log(2 * math.pi * variance))


def mixture_log_density(x, centres, sigma):
  """log p_σ(x) [P] of the mixture with normalised d-dimensional components (differentiable in x)."""
  x = torch.as_tensor(x, dtype=torch.float64)
  centres = torch.as_tensor(centres, dtype=torch.float64)
  log_components = -squared_distances(x, centres) / (2 * sigma ** 2)
  return log_mean_density(log_components, centres[0].numel(), sigma ** 2)[:, 0]


def mixture_score(x, centres, sigma, eps=0., chunk=1024):
  """∇x log p_σ(x) [P, *shape] of the mixture on `centres` [M, *shape], in float64, batched over rows of x; sigma is
  one number or one per row of x.

  eps > 0 gives the toy original's regularised form [mean_j N_j (x_j − x)/σ²] / (mean_j N_j + eps), which differs
  from the exact score only where the density is below ~eps (far from the data); eps = 0 is the exact score.
  """
  x = torch.as_tensor(x, dtype=torch.float64)
  centres = torch.as_tensor(centres, dtype=torch.float64)
  flat_centres = centres.reshape(len(centres), -1)
  sigmas = torch.as_tensor(sigma, dtype=torch.float64).expand(len(x))
  scores = []
  for part, sigma in zip(x.split(chunk), sigmas.split(chunk)):
    flat, variance = part.reshape(len(part), -1), sigma[:, None] ** 2
    log_components = -squared_distances(flat, flat_centres) / (2 * variance)
    score = (torch.softmax(log_components, dim=1) @ flat_centres - flat) / variance
    if eps:
      score = score / (1 + eps * torch.exp(-log_mean_density(log_components, flat.shape[1], variance)))
    scores.append(score.reshape(part.shape))
  return torch.cat(scores)


def posterior_scores(x, labels, centres, centre_labels, sigma):
  """The exact scores at noisy points x with class `labels` [P]: {'prior': ∇log p_σ(x), 'conditional':
  ∇log p_σ(x | y), 'likelihood': ∇log p_σ(y | x)}, float64; the classes' mixtures are over their own centres."""
  prior = mixture_score(x, centres, sigma)
  conditional = conditional_scores(x, labels, centres, centre_labels, sigma)
  return dict(prior=prior, conditional=conditional, likelihood=conditional - prior)


def conditional_scores(x, labels, centres, centre_labels, sigma):
  """∇log p_σ(x | y) [P, *shape] at x with class `labels` [P], each class's mixture over its own centres; float64."""
  x = torch.as_tensor(x, dtype=torch.float64)
  labels, centre_labels = torch.as_tensor(labels), torch.as_tensor(centre_labels)
  conditional = torch.empty_like(x)
  for c in labels.unique().tolist():
    rows = labels == c
    conditional[rows] = mixture_score(x[rows], centres[centre_labels == c], sigma)
  return conditional


def relative_squared_error(estimate, truth):
  """E‖estimate − truth‖² / E‖truth‖² over the rows (a ratio of means, as the digits tables report it); 0 when both
  are zero, inf when only the truth is."""
  estimate = torch.as_tensor(estimate, dtype=torch.float64)
  truth = torch.as_tensor(truth, dtype=torch.float64)
  error, norm = ((estimate - truth) ** 2).sum().item(), (truth ** 2).sum().item()
  return error / norm if norm else (0. if error == 0 else math.inf)


def exact_draws(centres, sigma, num_samples, generator):
  """num_samples draws of the mixture: a centre chosen uniformly plus σ·z (float64 NumPy)."""
  centres = torch.as_tensor(centres, dtype=torch.float64)
  index = torch.randint(len(centres), (num_samples,), generator=generator)
  noise = torch.randn(num_samples, *centres.shape[1:], generator=generator, dtype=torch.float64)
  return (centres[index] + sigma * noise).numpy()
