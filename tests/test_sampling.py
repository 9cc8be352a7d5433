"""Samplers: golden PC steps and seeded runs of the original, exact-score checks of every component, and the
σ-space solvers on Gaussian mixtures (VE, VP, sub-VP), their orders of convergence and their counted NFE."""
import copy
import math

import pytest
import torch

import sampling
import sde_lib
import time_grids
from models import utils as mutils
from tests.helpers import assert_close_to_golden, load_config, sde_from_golden

# ---------------------------------------------------------------------------------------------
# A two-class Gaussian mixture in 2-D: exact scores and Bayes-optimal classifier logits at every t,
# so the guided score with scale 1 is exactly the class-conditional score.

MEANS = torch.tensor([[3., 0.], [-3., 1.]])
DATA_STD = 0.5


def _perturbed_stats(sde, t):
  """Mean coefficient a(t) and variance a²s² + σ(t)² of each perturbed mixture component."""
  a = sde.marginal_prob(torch.ones(t.shape[0], 1), t)[0][:, 0]
  std = sde.marginal_prob(torch.zeros(t.shape[0], 1), t)[1]
  return a, a ** 2 * DATA_STD ** 2 + std ** 2


def mixture_fns(sde):
  def logits_fn(x, t):
    a, var = _perturbed_stats(sde, t)
    diff = x[:, None, :] - a[:, None, None] * MEANS
    return -(diff ** 2).sum(-1) / (2 * var[:, None])

  def score_fn(x, t):
    a, var = _perturbed_stats(sde, t)
    weights = torch.softmax(logits_fn(x, t), dim=-1)
    return -(x - a[:, None] * (weights @ MEANS)) / var[:, None]
  return score_fn, logits_fn


SDES = {
    've': lambda n: (sde_lib.VESDE(sigma_min=0.01, sigma_max=10., N=n), 1e-5),
    'vp': lambda n: (sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=n), 1e-3),
    'subvp': lambda n: (sde_lib.subVPSDE(beta_min=0.1, beta_max=20., N=n), 1e-3),
}
BATCH = 600
LABELS = torch.arange(BATCH) % 2


def _class_stats(x):
  """Per-class sample means (2, 2) and the mean per-coordinate std."""
  means = torch.stack([x[LABELS == c].mean(0) for c in (0, 1)])
  stds = torch.stack([x[LABELS == c].std(0) for c in (0, 1)])
  return means, stds.mean()


class _CountingScore:
  """A score function counting its calls."""

  def __init__(self, score_fn):
    self.score_fn, self.calls = score_fn, 0

  def __call__(self, x, t):
    self.calls += 1
    return self.score_fn(x, t)


def _run_pc(sde_name, predictor, corrector, n=200, scale=1.0, probability_flow=False, seed=0):
  """(samples, the denoiser's NFE) of the guided PC (or adaptive) sampler on the linear grid of n steps."""
  sde, eps = SDES[sde_name](n)
  score_fn, logits_fn = mixture_fns(sde)
  counting = _CountingScore(score_fn)
  denoiser = sampling.GuidedDenoiser(sde, counting, logits_fn, LABELS, sampling.Guidance(scale))
  pc = sampling.PCSettings(predictor, corrector, probability_flow=probability_flow)
  torch.manual_seed(seed)
  x = sde.prior_sampling((BATCH, 2))
  if predictor == 'adaptive':
    x = sampling.sample_adaptive(denoiser, x, eps, pc)
  else:
    x = sampling.sample_pc(denoiser, x, time_grids.time_grid('linear', sde, n, eps), pc)
  assert denoiser.nfe == counting.calls
  return x, denoiser.nfe


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('predictor,corrector', [
    ('reverse_diffusion', 'langevin'), ('euler_maruyama', 'langevin'), ('ancestral_sampling', 'ald'),
    ('reverse_diffusion', 'none'), ('none', 'langevin'), ('euler_maruyama', 'ald')])
def test_guided_samplers_hit_the_class_conditionals(sde_name, predictor, corrector):
  if predictor == 'ancestral_sampling' and sde_name == 'subvp':
    pytest.skip('ancestral sampling is defined for VE and VP only')
  n = 1000 if predictor == 'none' else 200  # Langevin alone needs more steps
  x, nfe = _run_pc(sde_name, predictor, corrector, n=n)
  assert nfe == n * ((predictor != 'none') + (corrector != 'none'))  # the true count: 'none' evaluates nothing
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1, std


def test_guidance_scale_zero_samples_the_mixture():
  x, _ = _run_pc('ve', 'reverse_diffusion', 'langevin', scale=0.)
  upper = (x[:, 0] > 0).float().mean()
  assert 0.4 < upper < 0.6  # both modes, whatever the label
  x, _ = _run_pc('ve', 'reverse_diffusion', 'langevin', scale=1.)
  assert ((x[:, 0] > 0) == (LABELS == 0)).all()


def test_probability_flow_predictors_are_deterministic_and_guided():
  for predictor in ('reverse_diffusion', 'euler_maruyama'):  # EM crashed in the original (B31)
    x, _ = _run_pc('vp', predictor, 'none', probability_flow=True, n=400)
    means, std = _class_stats(x)
    assert torch.allclose(means, MEANS, atol=0.15), (predictor, means)
    assert abs(std - DATA_STD) < 0.1
    x2, _ = _run_pc('vp', predictor, 'none', probability_flow=True, n=400, seed=0)
    assert torch.equal(x, x2)


def test_unsupported_combinations_fail_at_construction():
  sde = sde_lib.subVPSDE()
  with pytest.raises(NotImplementedError, match='VESDE and VPSDE'):
    sampling.get_predictor('ancestral_sampling')(sde, None)
  with pytest.raises(ValueError, match='probability-flow'):
    sampling.get_predictor('ancestral_sampling')(sde_lib.VESDE(), None, probability_flow=True)
  with pytest.raises(ValueError, match='unknown predictor'):
    sampling.get_predictor('leapfrog')
  with pytest.raises(ValueError, match='unknown corrector'):
    sampling.get_corrector('hmc')
  with pytest.raises(ValueError, match="unknown sampling.method 'leapfrog'"):
    sampling.get_sampling_fn(_config(method='leapfrog'), sde, (4, 2), lambda x: x, 1e-3)


@pytest.mark.parametrize('sde_name,probability_flow', [('ve', False), ('vp', False), ('vp', True)])
def test_adaptive_sampler_terminates_at_the_sampler_eps(sde_name, probability_flow):
  # VP's eps is 1e-3: the original's own end time 1e-5 never terminated there, and the flow crashed (B42).
  x, nfe = _run_pc(sde_name, 'adaptive', 'langevin', probability_flow=probability_flow)
  assert 10 < nfe < 1000
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_ode_sampler_is_guided_and_counts_evaluations(sde_name):
  sde, eps = _flow_sde(sde_name)
  score_fn, logits_fn = mixture_fns(sde)

  def sample(z):
    counting = _CountingScore(score_fn)
    denoiser = sampling.GuidedDenoiser(sde, counting, logits_fn, LABELS)
    x = sampling.sample_ode(denoiser, z, eps, denoise=True)
    assert denoiser.nfe == counting.calls
    return x, denoiser.nfe

  x, nfe = sample(sde.prior_sampling((BATCH, 2)))
  assert torch.isfinite(x).all()
  assert 20 < nfe < 2000 and (nfe - 3) % 6 == 0  # RK45: 2 start-up evaluations + 6 per step; 1 to denoise
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.1), means
  assert abs(std - DATA_STD) < 0.06
  z = sde.prior_sampling((BATCH, 2))
  assert torch.equal(sample(z)[0], sample(z)[0])


def _config(**sampling_fields):
  """The CIFAR-10 eval config on the CPU with these config.sampling fields ('dpmpp_2m.eta': a solver's option)."""
  from tests.helpers import load_config
  config = load_config('configs/eval/cifar10/eval_cifar10_configs.py')
  config.device = 'cpu'
  for field, value in sampling_fields.items():
    *sections, name = field.split('.')
    node = config.sampling
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def _sample_with_config(config, sde, eps, seed=0):
  """(samples, reported NFE, planned NFE, counted score calls) of get_sampling_fn's sampler on the mixture."""
  score_fn, logits_fn = mixture_fns(sde)
  counting = _CountingScore(score_fn)
  sampler = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)
  torch.manual_seed(seed)
  x, nfe = sampler(counting, logits_fn, LABELS)
  return x, nfe, sampler.nfe, counting.calls


def test_get_sampling_fn_follows_the_config():
  config = _config()
  config.model.num_scales = 200
  sde, eps = sde_lib.get_sde(config)
  score_fn, logits_fn = mixture_fns(sde)
  for method in ('pc', 'ode'):
    config.sampling.method = method
    x, nfe, planned, calls = _sample_with_config(config, sde, eps)
    assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15), method
    assert nfe == calls and planned == (400 if method == 'pc' else None)
    assert nfe == 400 if method == 'pc' else (nfe - 3) % 6 == 0
    with pytest.raises(ValueError, match='pass a classifier'):
      sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)(score_fn)
  config.sampling.dtype = 'float16'
  with pytest.raises(ValueError, match='sampling.dtype'):
    sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)
  config.sampling.dtype, config.sampling.classifier_dtype = 'bfloat16', 'float16'
  with pytest.raises(ValueError, match='sampling.classifier_dtype'):
    sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)


@pytest.mark.parametrize('mode', ['dtype', 'classifier_dtype'])
def test_bfloat16_modes_stay_within_5_percent_of_float32(mode):
  """The guided denoiser with the score network (dtype) or the classifier (classifier_dtype) under bf16 autocast,
  on small digits networks: its step D − x differs from float32's by more than 0 and at most 5 % (relative L2)."""
  config = load_config('configs/digits/eval.py')
  config.model.nf, config.classifier.resnet_base_width = 8, 4
  torch.manual_seed(0)
  networks = mutils.create_model(config).eval(), mutils.create_classifier(config).eval()
  with torch.no_grad():  # random weights in the zero-initialised layers, so that every layer matters
    for param in (p for model in networks for p in model.parameters() if not p.any()):
      param.copy_(torch.randn(param.shape) * 0.02)
  sde, _ = sde_lib.get_sde(config)
  labels, x0 = torch.arange(16) % 10, torch.rand(16, 1, 8, 8)
  settings = sampling.NetworkSettings(**{mode: torch.bfloat16})
  for sigma in (0.05, 0.5, 5.):
    x = x0 + sigma * torch.randn_like(x0)
    exact, reduced = (sampling.build_denoiser(sde, *networks, labels, sampling.Guidance(1.), s)(x, sigma)
                      for s in (sampling.NetworkSettings(), settings))
    assert 0 < ((reduced - exact).norm() / (exact - x).norm()).item() <= 0.05, sigma


def test_guidance_follows_sampling_conditional():
  """As in the original, an unconditional config samples without guidance even when a classifier is passed."""
  config = _config(conditional=False)
  config.model.num_scales = 50
  sde, eps = sde_lib.get_sde(config)
  score_fn, logits_fn = mixture_fns(sde)
  sampling_fn = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)
  torch.manual_seed(0)
  ignored, _ = sampling_fn(score_fn, logits_fn, LABELS)
  torch.manual_seed(0)
  assert torch.equal(ignored, sampling_fn(score_fn)[0])
  config.sampling.conditional = True
  torch.manual_seed(0)
  guided, _ = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)(score_fn, logits_fn, LABELS)
  assert not torch.allclose(guided, ignored)


def test_log_prob_grad_matches_the_closed_form():
  sde, _ = SDES['ve'](10)
  score_fn, logits_fn = mixture_fns(sde)
  x, t = torch.randn(8, 2) * 3, torch.rand(8)
  labels = torch.arange(8) % 2
  grad = sampling.log_prob_grad(logits_fn, x, t, labels, eps=0)
  guided = sampling.get_guided_score_fn(score_fn, logits_fn, labels, scale=1.0, eps=0)(x, t)
  a, var = _perturbed_stats(sde, t)
  conditional_score = -(x - a[:, None] * MEANS[labels]) / var[:, None]
  assert torch.allclose(guided, conditional_score, atol=1e-5)
  assert torch.allclose(grad, conditional_score - score_fn(x, t), atol=1e-5)
  # The 1e-8 sits inside the log: a class with probability ≈ 0 gets a damped gradient.
  far = torch.tensor([[40., 0.]])
  damped = sampling.log_prob_grad(logits_fn, far, torch.tensor([0.]), torch.tensor([1]))
  assert damped.abs().max() < 1e-3 * sampling.log_prob_grad(logits_fn, far, torch.tensor([0.]),
                                                              torch.tensor([1]), eps=0).abs().max()


# ---------------------------------------------------------------------------------------------
# Time grids and the σ-space solvers.

@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_sigma_and_its_inverse(sde_name):
  sde, eps = SDES[sde_name](1000)
  t = torch.linspace(eps, 1, 50, dtype=torch.float64)
  assert torch.allclose(sde.time_of_sigma(sde.sigma(t)), t, rtol=1e-9, atol=1e-12)
  mean, std = sde.marginal_prob(torch.ones(50, 1, dtype=torch.float64), t)
  assert torch.allclose(sde.sigma(t), std / mean[:, 0]) and torch.allclose(sde.mean_coeff(t), mean[:, 0])


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_sde_with_other_steps_keeps_its_parameters(sde_name):
  sde, _ = SDES[sde_name](1000)
  resized = sde.with_steps(20)
  assert type(resized) is type(sde) and resized.N == 20 and resized.parameters == sde.parameters
  assert sde.with_steps(1000) is sde


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_time_grids(sde_name):
  sde, eps = SDES[sde_name](1000)
  original = time_grids.time_grid('linear', sde, sde.N, eps)
  assert torch.equal(original[:-1], torch.linspace(sde.T, eps, sde.N))  # the original's grid, bit for bit
  assert original.shape == (sde.N + 1,) and original[-1] == 0
  for grid, spacing in (('rho', lambda sigma: sigma ** (1 / 7.)), ('logsnr', torch.log)):
    times = time_grids.time_grid(grid, sde, 18, eps, rho=7.)
    assert times.shape == (19,) and times[0] == sde.T and times[-2] == eps and times[-1] == 0
    assert (times[1:] < times[:-1]).all()
    spaced = spacing(sde.sigma(times[:-1].double()))
    assert torch.allclose(spaced.diff(), spaced.diff().mean().expand(17), rtol=1e-4), grid  # evenly spaced
  sigmas = time_grids.sigma_grid('rho', sde, 18, eps)
  assert sigmas.dtype == torch.float64 and sigmas[-1] == 0 and len(sigmas) == 19
  assert torch.equal(time_grids.sigma_grid('rho', sde, 18, eps, to_zero=False), sigmas[:-1])
  with pytest.raises(ValueError, match='unknown sampling.grid'):
    time_grids.time_grid('cosine', sde, 18, eps)


def test_the_logsnr_grid_of_ve_is_the_linear_grid():
  sde, eps = SDES['ve'](1000)
  assert torch.allclose(time_grids.time_grid('logsnr', sde, 30, eps), time_grids.time_grid('linear', sde, 30, eps),
                        atol=1e-6)


def _flow_sde(sde_name):
  """The SDE and eps of SDES, VE with σ_max = 50: a deterministic flow keeps the prior's mismatch."""
  sde, eps = SDES[sde_name](1000)
  return (sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000), eps) if sde_name == 've' else (sde, eps)


# Every registered solver with settings it is tested at: (method, grid steps, its options).
SOLVER_SETTINGS = [
    ('euler', 40, {}),
    ('heun', 18, {}),
    ('heun', 40, {'s_churn': 20.}),
    ('dpmpp_2m', 20, {}),
    ('dpmpp_2m', 40, {'eta': 1.}),
    ('dpmpp_2m', 40, {'eta': 10.}),
    ('dpmpp_2m', 40, {'eta': 10., 'second_order_below': 0.3}),
    ('dpmpp_3m_sde', 30, {}),
    ('dpmpp_3m_sde', 20, {'eta': 0.}),
    ('unipc', 20, {}),
    ('unipc', 25, {'order': 3}),
    ('unipc', 30, {'variant': 'bh1'}),
]


def _solver_config(method, steps, options, grid='rho'):
  return _config(method=method, grid=grid, num_steps=steps, **{f'{method}.{k}': v for k, v in options.items()})


def test_every_solver_has_test_settings():
  assert {method for method, _, _ in SOLVER_SETTINGS} == set(sampling._SOLVERS)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('method,steps,options', SOLVER_SETTINGS)
def test_solvers_hit_the_class_conditionals_and_count_their_evaluations(sde_name, method, steps, options):
  sde, eps = _flow_sde(sde_name)
  x, nfe, planned, calls = _sample_with_config(_solver_config(method, steps, options), sde, eps)
  assert nfe == planned == calls == (2 * steps - 1 if method == 'heun' else steps)
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1, std


def _gaussian_denoiser(sde, mean=1.5, std=0.5):
  """The GuidedDenoiser of data N(mean, std²): score −(x − s·mean) / (s²·(std² + σ²)) at time t."""
  def score_fn(x, t):
    s, sigma = sde.mean_coeff(t)[:, None], sde.sigma(t)[:, None]
    return -(x - s * mean) / (s ** 2 * (std ** 2 + sigma ** 2))
  return sampling.GuidedDenoiser(sde, score_fn)


# (method, options, order of convergence on the probability flow): the corrector of UniPC adds one.
ORDERS = [('euler', {}, 1), ('heun', {}, 2), ('dpmpp_2m', {}, 2), ('dpmpp_2m', {'second_order_below': 0.}, 1),
          ('dpmpp_3m_sde', {'eta': 0.}, 3),
          ('unipc', {'order': 1}, 2), ('unipc', {'order': 2}, 3), ('unipc', {'order': 2, 'corrector': False}, 2)]


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('method,options,order', ORDERS)
def test_deterministic_solvers_converge_at_their_order(sde_name, method, options, order):
  """On data N(1.5, 0.5²) the flow from σ_0 to σ_1 is x̂(σ_1) = 1.5 + (x̂(σ_0) − 1.5)·√((0.25 + σ_1²)/(0.25 + σ_0²));
  doubling the log-spaced steps from 16 to 32 divides the error by about 2^order."""
  sde = SDES[sde_name](1000)[0]
  start = 1.5 + torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None] * math.sqrt(0.25 + 20. ** 2)
  exact = 1.5 + (start - 1.5) * math.sqrt((0.25 + 0.02 ** 2) / (0.25 + 20. ** 2))
  errors = []
  for steps in (16, 32):
    sigmas = torch.logspace(math.log10(20.), math.log10(0.02), steps + 1, dtype=torch.float64)
    x = sampling.get_solver(method)(_gaussian_denoiser(sde), start.clone(), sigmas, **options)
    errors.append((x - exact).abs().max().item())
  assert math.log2(errors[0] / errors[1]) > order - 0.25, errors


PC_COMBINATIONS = [('reverse_diffusion', 'langevin', 'linear'), ('none', 'ald', 'linear'),
                   ('euler_maruyama', 'none', 'linear'), ('none', 'langevin', 'rho')]


@pytest.mark.parametrize('predictor,corrector,grid', PC_COMBINATIONS)
def test_pc_reports_the_number_of_network_calls(predictor, corrector, grid):
  config = _config(predictor=predictor, corrector=corrector, grid=grid, n_steps_each=2, num_steps=7)
  sde, eps = SDES['vp'](7)
  _, nfe, planned, calls = _sample_with_config(config, sde, eps)
  assert nfe == planned == calls == 7 * ((predictor != 'none') + 2 * (corrector != 'none'))


def test_building_a_sampler_leaves_the_random_state_alone():
  sde, eps = _flow_sde('ve')
  torch.manual_seed(0)
  expected = torch.rand(3)
  torch.manual_seed(0)
  sampling.get_sampling_fn(_solver_config('heun', 10, {'s_churn': 5.}), sde, (4, 2), lambda x: x, eps)
  assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize('method,noise', [('heun', 's_churn'), ('dpmpp_2m', 'eta')])
def test_without_their_noise_the_stochastic_solvers_are_the_deterministic_ones(method, noise):
  """Heun without churn is Algorithm 1; DPM-Solver++(2M) without Langevin mixing (η = 0) is the flow."""
  sde, eps = _flow_sde('vp')
  x, y, z = (_sample_with_config(_solver_config(method, 10, options), sde, eps)[0]
             for options in ({}, {noise: 0.}, {noise: 5.}))
  assert torch.equal(x, y) and not torch.allclose(x, z)


@pytest.mark.parametrize('method', ['dpmpp_2m', 'dpmpp_3m_sde'])
def test_sde_dpm_solver_step_is_exact_for_a_constant_denoiser(method):
  """With D = 0 (a point mass at 0) one step from σ to σ' gives N(e^{−(1+η)h}·x̂, σ'²(1 − e^{−2ηh})), h = ln(σ/σ')."""
  sigma, sigma_next, eta = 2., 1.2, 3.
  torch.manual_seed(0)
  x = sampling.get_solver(method)(lambda x, sigma: torch.zeros_like(x), torch.full((100000, 1), 2.),
                                  torch.tensor([sigma, sigma_next], dtype=torch.float64), eta=eta)
  ratio = sigma_next / sigma
  assert abs(x.mean().item() - 2 * ratio ** (1 + eta)) < 0.02
  assert abs(x.std().item() / (sigma_next * (1 - ratio ** (2 * eta)) ** 0.5) - 1) < 0.02


def test_the_final_step_to_zero_is_one_evaluation_that_removes_the_noise():
  sde, eps = _flow_sde('ve')
  config = _solver_config('dpmpp_2m', 20, {})
  clean, nfe = _sample_with_config(config, sde, eps)[:2]
  config.sampling.noise_removal = False
  noisy, nfe_noisy = _sample_with_config(config, sde, eps)[:2]
  assert (nfe, nfe_noisy) == (20, 19)
  assert 0 < (noisy - clean).abs().max() < 0.1  # the last step from σ(eps) = 0.01


def test_guidance_applies_only_in_its_sigma_range():
  sde, eps = _flow_sde('ve')
  score_fn, logits_fn = mixture_fns(sde)
  counting_logits = _CountingScore(logits_fn)
  config = _solver_config('dpmpp_2m', 10, {}, grid='logsnr')
  config.sampling.guided_sigma_min, config.sampling.guided_sigma_max = 0.5, 5.
  sampler = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)
  assert 'guided where 0.5 ≤ σ ≤ 5' in sampler.description
  sampler(score_fn, counting_logits, LABELS)
  sigmas = time_grids.sigma_grid('logsnr', sde, 10, eps)[:-1]
  assert counting_logits.calls == int(((sigmas >= 0.5) & (sigmas <= 5.)).sum()) > 0
  config.sampling.guided_sigma_min = 100.  # nowhere: the unguided sampler
  unguided_config = _solver_config('dpmpp_2m', 10, {}, grid='logsnr')
  unguided_config.sampling.conditional = False
  torch.manual_seed(0)
  nowhere = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)(score_fn, logits_fn, LABELS)[0]
  torch.manual_seed(0)
  unguided = sampling.get_sampling_fn(unguided_config, sde, (BATCH, 2), lambda x: x, eps)(score_fn)[0]
  assert torch.equal(nowhere, unguided)


@pytest.mark.parametrize('field,value,message', [
    ('dpmpp_2m.eta', -1., 'sampling.dpmpp_2m.eta=-1.0: must be a number >= 0'),
    ('dpmpp_2m.second_order_below', -1., 'sampling.dpmpp_2m.second_order_below=-1.0: must be a number >= 0'),
    ('heun.s_churn', -1., 'sampling.heun.s_churn=-1.0: must be a number >= 0'),
    ('unipc.order', 4, 'sampling.unipc.order=4: must be 1, 2 or 3'),
    ('unipc.variant', 'bh3', "sampling.unipc.variant='bh3': must be one of ['bh1', 'bh2']")])
def test_solver_options_out_of_range_are_refused_when_built(field, value, message):
  config = _solver_config(field.split('.')[0], 10, {field.split('.')[1]: value})
  sde, eps = _flow_sde('ve')
  with pytest.raises(ValueError) as error:
    sampling.get_sampling_fn(config, sde, (4, 2), lambda x: x, eps)
  assert str(error.value) == message


@pytest.mark.parametrize('fields,message', [
    (dict(snr=0.), 'sampling.snr=0.0: must be a number > 0'),
    (dict(n_steps_each=0), 'sampling.n_steps_each=0: must be an integer >= 1'),
    (dict(method='ode', ode_rtol=0.), 'sampling.ode_rtol=0.0: must be a number > 0'),
    (dict(grid='rho'), "predictor 'reverse_diffusion' steps by the SDE's own discretisation")])
def test_pc_and_ode_settings_out_of_range_are_refused_when_built(fields, message):
  sde, eps = SDES['ve'](100)
  with pytest.raises(ValueError, match=message):
    sampling.get_sampling_fn(_config(**fields), sde, (4, 2), lambda x: x, eps)


def test_discrete_time_networks_keep_their_steps():
  config = _config(num_steps=50)
  config.training.continuous = False
  sde, eps = SDES['ve'](100)
  with pytest.raises(ValueError, match='discrete-time networks'):
    sampling.get_sampling_fn(config, sde, (4, 2), lambda x: x, eps)


def test_get_sampling_fn_passes_the_solver_options(monkeypatch):
  seen = {}
  solver = sampling.get_solver('dpmpp_2m')
  monkeypatch.setitem(sampling._SOLVERS, 'dpmpp_2m', lambda *args, **options: seen.update(options) or solver(
      *args, **options))
  sde, eps = _flow_sde('ve')
  options = {'eta': 10., 's_noise': 1.01, 'second_order_below': 0.5}
  x, nfe = _sample_with_config(_solver_config('dpmpp_2m', 40, options), sde, eps)[:2]
  assert seen == options and nfe == 40
  assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15)


def test_a_new_solver_is_one_function_and_its_registration():
  @sampling.register_solver('midpoint')
  def sample_midpoint(denoiser, x, sigmas):
    """The explicit midpoint rule on the probability flow, Euler to σ = 0."""
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
      denoised = denoiser(x, sigma)
      if sigma_next == 0:
        return denoised
      sigma_mid = (sigma * sigma_next) ** 0.5
      x_mid = x + (sigma_mid - sigma) * (x - denoised) / sigma
      x = x + (sigma_next - sigma) * (x_mid - denoiser(x_mid, sigma_mid)) / sigma_mid
    return x
  try:
    sde, eps = _flow_sde('vp')
    x, nfe, planned, calls = _sample_with_config(_config(method='midpoint', grid='rho', num_steps=20), sde, eps)
    assert nfe == planned == calls == 2 * 19 + 1
    assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15)
  finally:
    del sampling._SOLVERS['midpoint']


# ---------------------------------------------------------------------------------------------
# Golden files of the original (pc_step_small_{ve,vp}.pt): one guided Langevin + reverse-diffusion step
# with the captured noise, and complete seeded runs of the original get_pc_sampler.

_NETWORKS = {}


def golden_network(golden, file_name):
  """The network of a golden model file (its flat config and state_dict), built once, eval mode, CPU."""
  if file_name not in _NETWORKS:
    from models.checkpoint import load_model_state
    from models.utils import create_classifier, create_model
    from tests.helpers import config_from_flat
    record = golden(file_name)
    config = config_from_flat(record['config'])
    config.device = 'cpu'
    build = create_model if 'score' in file_name else create_classifier
    _NETWORKS[file_name] = load_model_state(build(config), record['state_dict'], what=file_name).eval()
  return _NETWORKS[file_name]


def golden_networks(golden, record):
  """(score model, classifier) named by a pc_step record (score_model_file, classifier_model_file)."""
  return golden_network(golden, record['score_model_file']), golden_network(golden, record['classifier_model_file'])


def _as_captured(update):
  """A step as the golden files captured it, (x, t) -> (x, x_mean): these steps do not use the next time."""
  return lambda x, t: update(x, t, None)[:2]


def _golden_step_components(record, guided_score_fn):
  sde = sde_from_golden(record['sde'])
  corrector = sampling.get_corrector('langevin')(sde, guided_score_fn, record['snr'], record['n_steps_each'])
  predictor = sampling.get_predictor('reverse_diffusion')(sde, guided_score_fn, record['probability_flow'])
  return _as_captured(corrector), _as_captured(predictor)


def _check_golden_step(name, case, corrector, predictor, rtol):
  torch.manual_seed(case['torch_manual_seed'])  # reproduces the captured noises (checked below)
  with torch.no_grad():
    x, x_mean = corrector(case['x_in'], case['t'])
    assert_close_to_golden(x_mean, case['corrector_x_mean'], rtol, f'{name} corrector_x_mean')
    assert_close_to_golden(x, case['corrector_x'], rtol, f'{name} corrector_x')
    x, x_mean = predictor(case['corrector_x'], case['t'])
    assert_close_to_golden(x_mean, case['predictor_x_mean'], rtol, f'{name} predictor_x_mean')
    assert_close_to_golden(x, case['predictor_x'], rtol, f'{name} predictor_x')


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_golden_step_updates_from_the_stored_scores(golden, sde_name):
  """The update algebra and the draw order alone: the guided scores are replayed from the file."""
  record = golden(f'pc_step_small_{sde_name}')
  for name, case in record['cases'].items():
    sf = case['scaling_factor']
    replay = iter([case['corrector_score'] + sf * case['corrector_classifier_grad'],
                   case['predictor_score'] + sf * case['predictor_classifier_grad']])
    corrector, predictor = _golden_step_components(record, lambda x, t: next(replay))
    _check_golden_step(name, case, corrector, predictor, rtol=1e-6)


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_golden_step_with_the_networks(golden, sde_name):
  record = golden(f'pc_step_small_{sde_name}')
  sde = sde_from_golden(record['sde'])
  score_model, classifier = golden_networks(golden, record)
  score_fn = sampling.as_score_fn(sde, score_model, continuous=record['continuous'])
  classifier_fn = sampling.as_classifier_fn(sde, classifier, continuous=record['continuous'])
  for name, case in record['cases'].items():
    with torch.no_grad():
      assert_close_to_golden(score_fn(case['x_in'], case['t']), case['corrector_score'], name=f'{name} score')
    grad = sampling.log_prob_grad(classifier_fn, case['x_in'], case['t'], case['cond'])
    assert_close_to_golden(grad, case['corrector_classifier_grad'], name=f'{name} classifier grad')
    guided = sampling.get_guided_score_fn(score_fn, classifier_fn, case['cond'], case['scaling_factor'])
    corrector, predictor = _golden_step_components(record, guided)
    _check_golden_step(name, case, corrector, predictor, rtol=1e-4)


class _DrawRecorder:
  """Wraps torch.randn / torch.randn_like to record every draw in call order."""

  def __init__(self, monkeypatch):
    self.draws = []
    for name in ('randn', 'randn_like'):
      original = getattr(torch, name)
      monkeypatch.setattr(torch, name, self._recording(original))

  def _recording(self, draw):
    def recorded(*args, **kwargs):
      value = draw(*args, **kwargs)
      self.draws.append(value.clone())
      return value
    return recorded


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_golden_mini_sampler_reproduces_the_original(golden, monkeypatch, sde_name):
  record = golden(f'pc_step_small_{sde_name}')
  mini = record['mini_sampler']
  sde = sde_from_golden(mini['sde'])
  score_model, classifier = golden_networks(golden, record)
  centered = record['config']['data.centered']
  flags = [p.requires_grad for p in classifier.parameters()]
  for name, run in mini['runs'].items():
    config = _config(method='pc', predictor='reverse_diffusion', corrector='langevin', snr=record['snr'],
                     n_steps_each=record['n_steps_each'], probability_flow=record['probability_flow'],
                     noise_removal=mini['denoise'], scaling_factor=run['scaling_factor'], conditional=True)
    config.training.continuous = record['continuous']
    sampler = sampling.get_sampling_fn(config, sde, tuple(mini['shape']),
                                       (lambda x: (x + 1.) / 2.) if centered else (lambda x: x), mini['eps'])
    with monkeypatch.context() as patch:
      recorder = _DrawRecorder(patch)
      torch.manual_seed(run['torch_manual_seed'])
      output, nfe = sampler(score_model, classifier, run['cond'])
    assert nfe == run['nfe']
    assert len(recorder.draws) == len(run['rng_draws'])
    for mine, theirs in zip(recorder.draws, run['rng_draws']):
      assert torch.equal(mine, theirs)
    assert_close_to_golden(output, run['output'], name=f'{name} mini sampler output')
  assert score_model.training is False and classifier.training is False
  assert flags == [p.requires_grad for p in classifier.parameters()]  # frozen only while sampling


def test_ode_sampler_on_a_small_network_returns_finite_samples_and_its_nfe(golden):
  record = golden('pc_step_small_ve')
  score_model, classifier = golden_networks(golden, record)
  sde = sde_lib.VESDE()
  z = sde.prior_sampling((1, 3, 32, 32))

  def sample(classifier, labels):
    denoiser = sampling.build_denoiser(sde, score_model, classifier, labels, sampling.Guidance(10.))
    with torch.no_grad():
      return sampling.sample_ode(denoiser, z, 1e-5, rtol=1e-3, atol=1e-3, denoise=True), denoiser.nfe

  guided, nfe = sample(classifier, torch.tensor([3]))
  unguided, _ = sample(None, None)
  assert torch.isfinite(guided).all() and guided.shape == (1, 3, 32, 32)
  assert nfe >= 9 and (nfe - 3) % 6 == 0
  assert not torch.allclose(guided, unguided)  # the classifier steers the flow


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_golden_step_on_the_gpu(golden, monkeypatch, sde_name):
  """The VE tables are looked up on the device (the original crashed here, B40); TF32 off for parity."""
  record = golden(f'pc_step_small_{sde_name}')
  case = record['cases'][max(record['cases'], key=lambda name: record['cases'][name]['timestep_index'])]
  device = torch.device('cuda')
  monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # what models.utils.use_exact_float32 sets
  monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
  sde = sde_from_golden(record['sde'])
  score_model, classifier = (copy.deepcopy(network).to(device) for network in golden_networks(golden, record))
  guided = sampling.get_guided_score_fn(sampling.as_score_fn(sde, score_model),
                                        sampling.as_classifier_fn(sde, classifier), case['cond'].to(device),
                                        case['scaling_factor'])
  noises = iter([case['corrector_noise'].to(device), case['predictor_z'].to(device)])
  monkeypatch.setattr(torch, 'randn_like', lambda x: next(noises))
  corrector, predictor = _golden_step_components(record, guided)
  t = case['t'].to(device)
  with torch.no_grad():
    x, _ = corrector(case['x_in'].to(device), t)
    assert_close_to_golden(x, case['corrector_x'], name='corrector_x')
    x, x_mean = predictor(case['corrector_x'].to(device), t)
  assert_close_to_golden(x_mean, case['predictor_x_mean'], name='predictor_x_mean')
  assert_close_to_golden(x, case['predictor_x'], name='predictor_x')


# ---------------------------------------------------------------------------------------------
# Shape.

SAMPLER_FILES = ('sampling.py', 'time_grids.py', 'run_lib_sampling.py', 'toy/samplers.py',
                 'benchmarks/bench_sampler_nfe.py', 'benchmarks/bench_sampling.py')


@pytest.mark.parametrize('path', SAMPLER_FILES)
def test_no_sampling_function_takes_more_than_eight_parameters(path):
  import ast
  from tests.helpers import REPO_ROOT

  def count(args):
    return len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
  functions = [node for node in ast.walk(ast.parse((REPO_ROOT / path).read_text()))
               if isinstance(node, ast.FunctionDef)]
  too_many = [f'{node.name} ({count(node.args)})' for node in functions if count(node.args) > 8]
  assert not too_many, too_many
