"""mixture.py (exact scores of Gaussian mixtures) and the digits posterior-score errors built on it."""
import math

import pytest
import torch

import evaluation
import mixture


def random_mixture(num_centres=7, dimension=5, seed=0):
  generator = torch.Generator().manual_seed(seed)
  centres = torch.randn(num_centres, dimension, generator=generator, dtype=torch.float64)
  points = 1.5 * torch.randn(11, dimension, generator=generator, dtype=torch.float64)
  return centres, points


@pytest.mark.parametrize('sigma', [0.3, 1.0, 4.0])
def test_mixture_score_equals_autograd_of_the_log_density(sigma):
  centres, points = random_mixture()
  points.requires_grad_(True)
  expected, = torch.autograd.grad(mixture.mixture_log_density(points, centres, sigma).sum(), points)
  torch.testing.assert_close(mixture.mixture_score(points.detach(), centres, sigma, chunk=4), expected,
                             rtol=1e-10, atol=1e-12)


def test_mixture_log_density_is_the_normalised_density():
  centres = torch.tensor([[0., 0.], [3., 4.]], dtype=torch.float64)
  x = torch.tensor([[1., 1.]], dtype=torch.float64)
  sigma = 1.5
  density = sum(math.exp(-((x[0] - c) ** 2).sum().item() / (2 * sigma ** 2)) for c in centres) / 2
  expected = math.log(density / (2 * math.pi * sigma ** 2))
  assert mixture.mixture_log_density(x, centres, sigma).item() == pytest.approx(expected, rel=1e-12)


def test_two_point_mixture_score_is_exact():
  """Centres ±a: ∇ log p = (a·tanh(a·x / σ²) − x) / σ² in closed form, also where one component underflows."""
  a, sigma = torch.tensor([2., -1., 0.5], dtype=torch.float64), 0.7
  x = torch.tensor([[0.3, 0.2, -0.1], [40., 0., 0.], [-0.5, 3., 1.]], dtype=torch.float64)
  expected = (torch.tanh(x @ a / sigma ** 2)[:, None] * a - x) / sigma ** 2
  torch.testing.assert_close(mixture.mixture_score(x, torch.stack([a, -a]), sigma), expected, rtol=1e-12, atol=1e-12)


def test_regularised_form_is_the_originals_direct_formula():
  centres, points = random_mixture(dimension=2)
  sigma, eps = 0.8, 1e-3
  difference = centres[None] - points[:, None]
  density = torch.exp(-(difference ** 2).sum(-1) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
  expected = (density[..., None] * difference / sigma ** 2).mean(1) / (density.mean(1, keepdim=True) + eps)
  torch.testing.assert_close(mixture.mixture_score(points, centres, sigma, eps=eps), expected, rtol=1e-10, atol=1e-14)


def test_per_row_sigma_equals_one_call_per_row():
  centres, points = random_mixture()
  sigmas = torch.linspace(0.5, 3., len(points), dtype=torch.float64)
  rows = torch.cat([mixture.mixture_score(p[None], centres, s.item()) for p, s in zip(points, sigmas)])
  torch.testing.assert_close(mixture.mixture_score(points, centres, sigmas, chunk=3), rows, rtol=1e-12, atol=1e-12)


def test_images_keep_their_shape():
  centres = torch.rand(6, 1, 2, 2, dtype=torch.float64)
  x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
  flat = mixture.mixture_score(x.reshape(3, -1), centres.reshape(6, -1), 0.5)
  torch.testing.assert_close(mixture.mixture_score(x, centres, 0.5), flat.reshape(3, 1, 2, 2))


def test_posterior_scores_are_bayes_rule():
  """The class mixtures over their own centres; the likelihood score is conditional − prior, and the prior score is
  the class scores averaged with the posterior class weights."""
  centres, points = random_mixture(num_centres=9)
  centre_labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
  labels = torch.arange(len(points)) % 3
  scores = mixture.posterior_scores(points, labels, centres, centre_labels, 1.2)
  for c in range(3):
    rows = labels == c
    torch.testing.assert_close(scores['conditional'][rows],
                               mixture.mixture_score(points[rows], centres[centre_labels == c], 1.2))
  torch.testing.assert_close(scores['likelihood'], scores['conditional'] - scores['prior'])
  log_joint = torch.stack([mixture.mixture_log_density(points, centres[centre_labels == c], 1.2)
                           + math.log((centre_labels == c).float().mean().item()) for c in range(3)], 1)
  posterior = torch.softmax(log_joint, 1)
  mixed = sum(posterior[:, c:c + 1] * mixture.mixture_score(points, centres[centre_labels == c], 1.2)
              for c in range(3))
  torch.testing.assert_close(mixed, scores['prior'])


def test_exact_draws_have_the_mixture_moments():
  centres = torch.tensor([[0., 0.], [10., 0.]], dtype=torch.float64)
  draws = mixture.exact_draws(centres, 2., 40000, torch.Generator().manual_seed(0))
  assert draws.mean(0) == pytest.approx([5., 0.], abs=0.1)
  assert draws.var(0) == pytest.approx([25. + 4., 4.], rel=0.03)


def test_half_split_agreement_is_small_where_the_noise_hides_the_finite_set():
  """Two classes 6 apart: at σ much larger than a class's width a random half gives the same scores; at σ much
  smaller than the spacing of its points it does not."""
  generator = torch.Generator().manual_seed(0)
  centre_labels = torch.arange(400) % 2
  centres = torch.randn(400, 3, generator=generator, dtype=torch.float64) + 6. * centre_labels[:, None]
  points, labels = evaluation.noisy_points(centres[:20], centre_labels[:20], 0.3, 1, generator)
  wide = evaluation.half_split_agreement(centres, centre_labels, points, labels, 5., generator)
  narrow = evaluation.half_split_agreement(centres, centre_labels, points, labels, 0.05, generator)
  assert all(value < 0.01 for value in wide.values()), wide
  assert narrow['prior'] > 0.3 and narrow['conditional'] > 0.3


def test_posterior_score_errors_of_the_oracle_itself():
  """Fields equal to the oracle have no error; the exact prior score unguided misses exactly the share."""
  centres, points = random_mixture(num_centres=8)
  labels = torch.arange(len(points)) % 2
  oracle = mixture.posterior_scores(points, labels, centres, torch.arange(8) % 2, 1.)
  errors = evaluation.posterior_score_errors(oracle, oracle['prior'], oracle['likelihood'], scale=1.)
  assert errors['score_error'] == 0. and errors['L'] == 0. and errors['C'] == pytest.approx(0., abs=1e-24)
  assert errors['C_unguided'] == pytest.approx(errors['share'], rel=1e-12) and 0 < errors['share'] < 1
  doubled = evaluation.posterior_score_errors(oracle, oracle['prior'], oracle['likelihood'] / 2, scale=2.)
  assert doubled['L'] == 0. and doubled['C'] == pytest.approx(0., abs=1e-24)
  assert evaluation.posterior_score_errors(oracle, oracle['prior'], 0 * oracle['likelihood'], 1.)['L'] == 1.


def test_noisy_points_are_draw_major():
  images, labels = torch.zeros(3, 1, 2, 2), torch.tensor([4, 5, 6])
  noisy, noisy_labels = evaluation.noisy_points(images, labels, 2., 2, torch.Generator().manual_seed(0))
  assert noisy.shape == (6, 1, 2, 2) and noisy.dtype == torch.float64
  assert noisy_labels.tolist() == [4, 5, 6, 4, 5, 6]
