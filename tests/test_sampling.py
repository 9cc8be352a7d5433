"""Samplers: golden PC steps and seeded runs of the original, plus exact-score checks of every component."""
import copy

import pytest
import torch

import sampling
import sde_lib
import time_grids
from tests.helpers import assert_close_to_golden, sde_from_golden

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


def _run_pc(sde_name, predictor, corrector, n=200, scale=1.0, probability_flow=False, seed=0, snr=0.16):
  sde, eps = SDES[sde_name](n)
  score_fn, logits_fn = mixture_fns(sde)
  sampler = sampling.get_pc_sampler(sde, (BATCH, 2), predictor, corrector, lambda x: x, snr=snr,
                                    probability_flow=probability_flow, eps=eps, device='cpu',
                                    scale=scale)
  torch.manual_seed(seed)
  return sampler(score_fn, logits_fn, LABELS)


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


@pytest.mark.parametrize('sde_name,probability_flow', [('ve', False), ('vp', False), ('vp', True)])
def test_adaptive_sampler_terminates_at_the_sampler_eps(sde_name, probability_flow):
  # VP's eps is 1e-3: the original's own end time 1e-5 never terminated there, and the flow crashed (B42).
  x, iterations = _run_pc(sde_name, 'adaptive', 'langevin', probability_flow=probability_flow)
  assert 10 < iterations < 1000
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_ode_sampler_is_guided_and_counts_evaluations(sde_name):
  sde, eps = SDES[sde_name](1000)
  if sde_name == 've':  # a deterministic flow keeps the prior's mismatch: make it negligible
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000)
  score_fn, logits_fn = mixture_fns(sde)
  sampler = sampling.get_ode_sampler(sde, (BATCH, 2), lambda x: x, denoise=True, eps=eps, device='cpu')
  torch.manual_seed(0)
  x, nfe = sampler(score_fn, logits_fn, LABELS)
  assert torch.isfinite(x).all()
  assert 20 < nfe < 2000 and (nfe - 2) % 6 == 0  # RK45: 2 start-up evaluations + 6 per step
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.1), means
  assert abs(std - DATA_STD) < 0.06
  z = torch.randn(BATCH, 2) * (sde.sigma_max if sde_name == 've' else 1.)
  assert torch.equal(sampler(score_fn, logits_fn, LABELS, z=z)[0], sampler(score_fn, logits_fn, LABELS, z=z)[0])


def test_get_sampling_fn_follows_the_config():
  from tests.helpers import load_config
  config = load_config('configs/eval/cifar10/eval_cifar10_configs.py')
  config.device, config.model.num_scales = 'cpu', 200
  sde, eps = sde_lib.get_sde(config)
  score_fn, logits_fn = mixture_fns(sde)
  for method in ('pc', 'ode'):
    config.sampling.method = method
    sampling_fn = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)
    torch.manual_seed(0)
    x, nfe = sampling_fn(score_fn, logits_fn, LABELS)
    assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15), method
    assert nfe == 400 if method == 'pc' else (nfe - 2) % 6 == 0
    with pytest.raises(ValueError, match='pass a classifier'):
      sampling_fn(score_fn)
  config.sampling.dtype = 'float16'
  with pytest.raises(ValueError, match='sampling.dtype'):
    sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)


def test_guidance_follows_sampling_conditional():
  """As in the original, an unconditional config samples without guidance even when a classifier is passed."""
  from tests.helpers import load_config
  config = load_config('configs/eval/cifar10/eval_cifar10_configs.py')
  config.device, config.model.num_scales, config.sampling.conditional = 'cpu', 50, False
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
# Time grids and the grid samplers (heun, heun_churn, dpm_solver_2m).

@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_sigma_and_its_inverse(sde_name):
  sde, eps = SDES[sde_name](1000)
  t = torch.linspace(eps, 1, 50, dtype=torch.float64)
  assert torch.allclose(sde.time_of_sigma(sde.sigma(t)), t, rtol=1e-9, atol=1e-12)
  mean, std = sde.marginal_prob(torch.ones(50, 1, dtype=torch.float64), t)
  assert torch.allclose(sde.sigma(t), std / mean[:, 0]) and torch.allclose(sde.mean_coeff(t), mean[:, 0])


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_time_grids(sde_name):
  sde, eps = SDES[sde_name](1000)
  original = sampling._time_grid(sde, eps, 3, 'cpu')
  assert torch.equal(original[:-1, 0], torch.linspace(sde.T, eps, sde.N))  # the original's grid, bit for bit
  assert original.shape == (sde.N + 1, 3) and original[-1].eq(0).all()
  times = time_grids.time_grid('rho', sde, 18, eps, rho=7.)
  assert times.shape == (19,) and times[0] == sde.T and times[-2] == eps and times[-1] == 0
  assert (times[1:] < times[:-1]).all()
  root = sde.sigma(times[:-1].double()) ** (1 / 7.)
  assert torch.allclose(root.diff(), root.diff().mean().expand(17), rtol=1e-4)  # σ^(1/ρ) evenly spaced
  with pytest.raises(ValueError, match='unknown sampling.grid'):
    time_grids.time_grid('cosine', sde, 18, eps)


GRID_SAMPLERS = {  # name: (grid steps, predictor options) at the recommended settings
    'heun': (18, None),
    'heun_churn': (40, dict(S_churn=20., num_steps=40)),
    'dpm_solver_2m': (20, None),
}


def _run_grid_sampler(sde_name, predictor, steps, options, count=None):
  sde, eps = SDES[sde_name](1000)
  if sde_name == 've':  # a deterministic flow keeps the prior's mismatch: make it negligible
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000)
  score_fn, logits_fn = mixture_fns(sde)
  sampler = sampling.get_pc_sampler(sde, (BATCH, 2), predictor, 'none', lambda x: x, snr=0.16, eps=eps,
                                    device='cpu', grid='rho', num_steps=steps, predictor_options=options)
  torch.manual_seed(0)
  return sampler(count or score_fn, logits_fn, LABELS)


class _CountingScore:
  """A score function counting its calls."""

  def __init__(self, score_fn):
    self.score_fn, self.calls = score_fn, 0

  def __call__(self, x, t):
    self.calls += 1
    return self.score_fn(x, t)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('predictor', list(GRID_SAMPLERS))
def test_grid_samplers_hit_the_class_conditionals(sde_name, predictor):
  steps, options = GRID_SAMPLERS[predictor]
  x, nfe = _run_grid_sampler(sde_name, predictor, steps, options)
  assert nfe == (steps if predictor == 'dpm_solver_2m' else 2 * steps - 1)
  means, std = _class_stats(x)
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1, std


PREDICTOR_OPTIONS = {'heun_churn': dict(S_churn=5., num_steps=7), 'dpm_solver_2m': dict(eta=10.)}


@pytest.mark.parametrize('predictor,corrector,grid', [
    ('heun', 'none', 'rho'), ('heun_churn', 'none', 'rho'), ('dpm_solver_2m', 'none', 'linear'),
    ('reverse_diffusion', 'langevin', 'linear'), ('none', 'ald', 'linear'), ('euler_maruyama', 'none', 'linear')])
def test_reported_nfe_is_the_number_of_network_calls(predictor, corrector, grid):
  sde, eps = SDES['vp'](7)
  counting = _CountingScore(mixture_fns(sde)[0])
  sampler = sampling.get_pc_sampler(sde, (4, 2), predictor, corrector, lambda x: x, snr=0.16, n_steps=2, eps=eps,
                                    device='cpu', grid=grid, predictor_options=(
                                        PREDICTOR_OPTIONS.get(predictor)))
  _, nfe = sampler(counting)
  assert nfe == counting.calls > 0


def test_stochastic_heun_without_churn_is_the_deterministic_heun():
  x, _ = _run_grid_sampler('vp', 'heun', 10, None)
  y, _ = _run_grid_sampler('vp', 'heun_churn', 10, dict(S_churn=0., num_steps=10))
  z, _ = _run_grid_sampler('vp', 'heun_churn', 10, dict(S_churn=5., num_steps=10))
  assert torch.equal(x, y) and not torch.allclose(x, z)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('eta', [1., 10.])
def test_sde_dpm_solver_hits_the_class_conditionals(sde_name, eta):
  x, nfe = _run_grid_sampler(sde_name, 'dpm_solver_2m', 40, dict(eta=eta))
  means, std = _class_stats(x)
  assert nfe == 40
  assert torch.allclose(means, MEANS, atol=0.15), means
  assert abs(std - DATA_STD) < 0.1, std


def test_sde_dpm_solver_without_langevin_is_the_flow():
  x, _ = _run_grid_sampler('vp', 'dpm_solver_2m', 10, None)
  y, _ = _run_grid_sampler('vp', 'dpm_solver_2m', 10, dict(eta=0.))
  z, _ = _run_grid_sampler('vp', 'dpm_solver_2m', 10, dict(eta=1.))
  assert torch.equal(x, y) and not torch.allclose(x, z)


def test_sde_dpm_solver_step_is_exact_for_a_constant_denoiser():
  """With D fixed (a point mass at 0: score −x/σ²) one step from σ to σ' gives N(e^{−(1+η)h}·x, σ'²(1 − e^{−2ηh}))."""
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000)
  t, t_next = torch.full((20000,), 0.8), torch.full((20000,), 0.5)
  sigma, sigma_next = sde.sigma(t[:1]).item(), sde.sigma(t_next[:1]).item()
  update = sampling.get_predictor('dpm_solver_2m')(sde, lambda x, t: -x / sde.sigma(t)[:, None] ** 2, eta=3.)
  torch.manual_seed(0)
  x, x_mean, nfe = update(torch.full((20000, 1), 2.), t, t_next)
  decay = (sigma_next / sigma) ** 4
  assert nfe == 1 and torch.allclose(x_mean, torch.full_like(x_mean, 2 * decay))
  assert abs(x.mean().item() - 2 * decay) < 0.02
  assert abs(x.std().item() / (sigma_next * (1 - (sigma_next / sigma) ** 6) ** 0.5) - 1) < 0.02


def test_table_predictors_refuse_other_grids():
  sde, eps = SDES['ve'](100)
  with pytest.raises(ValueError, match="'reverse_diffusion' steps by the SDE's own discretisation"):
    sampling.get_pc_sampler(sde, (4, 2), 'reverse_diffusion', 'langevin', lambda x: x, snr=0.16, eps=eps,
                            device='cpu', grid='rho')


def test_get_sampling_fn_builds_the_grid_samplers_from_the_config():
  from tests.helpers import load_config
  config = load_config('configs/eval/cifar10/eval_cifar10_configs.py')
  config.device = 'cpu'  # σ_max = 50: the prior matches the marginal at T
  config.sampling.update(dict(predictor='heun_churn', corrector='none', grid='rho', num_steps=40, S_churn=20.))
  sde, eps = sde_lib.get_sde(config)
  score_fn, logits_fn = mixture_fns(sde)
  torch.manual_seed(0)
  x, nfe = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)(score_fn, logits_fn, LABELS)
  assert nfe == 79
  assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15)


def test_get_sampling_fn_passes_eta_to_the_sde_dpm_solver(monkeypatch):
  from tests.helpers import load_config
  config = load_config('configs/eval/cifar10/eval_cifar10_configs.py')
  config.device = 'cpu'
  config.sampling.update(dict(predictor='dpm_solver_2m', corrector='none', grid='rho', num_steps=40, eta=10.,
                              S_noise=1.01))
  seen = {}
  builder = sampling.get_predictor('dpm_solver_2m')
  monkeypatch.setitem(sampling._PREDICTORS, 'dpm_solver_2m', lambda *a, **options: seen.update(options) or builder(
      *a, **options))
  sde, eps = sde_lib.get_sde(config)
  score_fn, logits_fn = mixture_fns(sde)
  x, nfe = sampling.get_sampling_fn(config, sde, (BATCH, 2), lambda x: x, eps)(score_fn, logits_fn, LABELS)
  assert seen == dict(eta=10., S_noise=1.01) and nfe == 40
  assert torch.allclose(_class_stats(x)[0], MEANS, atol=0.15)


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
    sampler = sampling.get_pc_sampler(
        sde, tuple(mini['shape']), 'reverse_diffusion', 'langevin',
        (lambda x: (x + 1.) / 2.) if centered else (lambda x: x), snr=record['snr'],
        n_steps=record['n_steps_each'], probability_flow=record['probability_flow'],
        continuous=record['continuous'], denoise=mini['denoise'], eps=mini['eps'], device='cpu',
        scale=run['scaling_factor'])
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
  sampler = sampling.get_ode_sampler(sde, (1, 3, 32, 32), lambda x: x, denoise=True, rtol=1e-3, atol=1e-3,
                                     eps=1e-5, device='cpu', scale=10.)
  z = sde.prior_sampling((1, 3, 32, 32))
  guided, nfe = sampler(score_model, classifier, 3, z=z)
  unguided, _ = sampler(score_model, None, None, z=z)
  assert torch.isfinite(guided).all() and guided.shape == (1, 3, 32, 32)
  assert nfe >= 8 and (nfe - 2) % 6 == 0
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
