"""SDEs against the reference numbers of the original, shapes, reverse SDE/ODE, the SDE methods the rest of the code
asks (network / classifier time, score from output, Langevin α, ancestral step), and the golden score wrappers."""
import math

import numpy as np
import pytest
import torch

import sde_lib
from models.utils import get_classifier_fn, get_score_fn
from tests.helpers import assert_close_to_golden, config_from_flat, sde_from_golden

SHAPES = [(5, 2), (3, 3, 32, 32)]


def make_sde(name, N=1000):
  return {'ve': lambda: sde_lib.VESDE(0.01, 50, N), 'vp': lambda: sde_lib.VPSDE(0.1, 20., N),
          'subvp': lambda: sde_lib.subVPSDE(0.1, 20., N)}[name]()


# ------------------------------------------------------------------------------------------ tables and values


def test_ve_sigma_table():
  sde = make_sde('ve')
  sigmas = sde.discrete_sigmas
  assert sigmas.dtype == torch.float32 and sigmas.shape == (1000,)
  assert sigmas[0].item() == pytest.approx(0.01, rel=1e-6)
  assert sigmas[-1].item() == pytest.approx(50.0, rel=1e-6)
  assert torch.all(sigmas[1:] > sigmas[:-1])
  expected = torch.exp(torch.linspace(math.log(0.01), math.log(50), 1000))
  assert torch.equal(sigmas, expected)


def test_vp_tables():
  sde = make_sde('vp')
  for table in (sde.discrete_betas, sde.alphas, sde.alphas_cumprod, sde.sqrt_alphas_cumprod,
                sde.sqrt_1m_alphas_cumprod):
    assert table.dtype == torch.float32 and table.shape == (1000,)
  assert sde.discrete_betas[0].item() == pytest.approx(1e-4, rel=1e-6)
  assert sde.discrete_betas[-1].item() == pytest.approx(0.02, rel=1e-6)
  assert torch.equal(sde.alphas, 1 - sde.discrete_betas)
  assert torch.equal(sde.alphas_cumprod, torch.cumprod(sde.alphas, 0))
  assert torch.equal(sde.sqrt_1m_alphas_cumprod, torch.sqrt(1 - sde.alphas_cumprod))
  assert sde.alphas_cumprod[-1].item() == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rel=1e-4)


@pytest.mark.parametrize('quantity, t, expected, rel', [
    ('subvp_std', 1e-3, 1.0994e-4, 5e-4), ('subvp_std', 1.0, 0.999957, 1e-6),
    ('vp_std', 1e-3, 0.010485, 5e-4), ('vp_std', 1.0, 0.999978, 1e-6),
    ('subvp_g2', 1e-3, 2.636e-5, 5e-4), ('vp_beta', 1e-3, 0.1199, 5e-4), ('mean_coeff', 1.0, 0.006572, 5e-4),
])
def test_reference_values(quantity, t, expected, rel):
  """Reference values of the original's SDEs (β₀ = 0.1, β₁ = 20)."""
  t = torch.tensor([t])
  x = torch.ones(1, 3)
  vp, subvp = make_sde('vp'), make_sde('subvp')
  value = {
      'subvp_std': lambda: subvp.marginal_prob(x, t)[1],
      'vp_std': lambda: vp.marginal_prob(x, t)[1],
      'subvp_g2': lambda: subvp.sde(x, t)[1] ** 2,
      'vp_beta': lambda: vp.sde(x, t)[1] ** 2,
      'mean_coeff': lambda: vp.marginal_prob(x, t)[0][0, 0],
  }[quantity]()
  assert value.item() == pytest.approx(expected, rel=rel)


def test_marginals_follow_the_formulas():
  t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
  x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
  ve, vp, subvp = make_sde('ve'), make_sde('vp'), make_sde('subvp')
  mean, std = ve.marginal_prob(x, t)
  assert torch.equal(mean, x)
  assert torch.allclose(std, 0.01 * 5000 ** t)
  m = -0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1
  mean, std = vp.marginal_prob(x, t)
  assert torch.allclose(mean, torch.exp(m)[:, None, None, None] * x)
  assert torch.allclose(std, torch.sqrt(1 - torch.exp(2 * m)))
  mean, std = subvp.marginal_prob(x, t)
  assert torch.allclose(mean, torch.exp(m)[:, None, None, None] * x)
  assert torch.allclose(std, 1 - torch.exp(2 * m))  # no square root
  _, g = ve.sde(x, t)
  assert torch.allclose(g, 0.01 * 5000 ** t * math.sqrt(2 * math.log(5000)))
  _, g = subvp.sde(x, t)
  assert torch.allclose(g ** 2, (0.1 + 19.9 * t) * (1 - torch.exp(4 * m)))


def test_float32_timestep_index_walks_the_grid_backwards():
  """k = trunc(t·999) is exactly 999 − i on the float32 sampling grid linspace(1, 1e-5, 1000)."""
  sde = make_sde('ve')
  grid = torch.linspace(1, 1e-5, 1000)
  assert torch.equal(sde.timestep_index(grid), torch.arange(999, -1, -1))


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize('name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('shape', SHAPES)
def test_shapes(name, shape):
  sde = make_sde(name)
  x = torch.randn(shape)
  t = torch.rand(shape[0]) * 0.9 + 0.05
  drift, diffusion = sde.sde(x, t)
  assert drift.shape == shape and diffusion.shape == (shape[0],)
  mean, std = sde.marginal_prob(x, t)
  assert mean.shape == shape and std.shape == (shape[0],)
  f, G = sde.discretize(x, t)
  assert f.shape == shape and G.shape == (shape[0],)
  assert sde.prior_sampling(shape).shape == shape
  assert sde.prior_logp(x).shape == (shape[0],)
  for probability_flow in (False, True):
    reverse = sde.reverse(lambda x, t: -x, probability_flow)
    drift, diffusion = reverse.sde(x, t)
    assert drift.shape == shape and diffusion.shape == (shape[0],)
    rev_f, rev_G = reverse.discretize(x, t)
    assert rev_f.shape == shape and rev_G.shape == (shape[0],)


# ------------------------------------------------------------------------------------------ prior


@pytest.mark.parametrize('name, scale', [('ve', 50.0), ('vp', 1.0), ('subvp', 1.0)])
def test_prior_is_one_randn_draw(name, scale):
  torch.manual_seed(3)
  sample = make_sde(name).prior_sampling((2, 3, 4, 4))
  torch.manual_seed(3)
  assert torch.equal(sample, torch.randn(2, 3, 4, 4) * scale)


@pytest.mark.parametrize('name, scale', [('ve', 50.0), ('vp', 1.0), ('subvp', 1.0)])
@pytest.mark.parametrize('shape', SHAPES)
def test_prior_logp(name, scale, shape):
  z = torch.randn(shape, dtype=torch.float64) * scale
  expected = torch.distributions.Normal(0., scale).log_prob(z).reshape(shape[0], -1).sum(1)
  assert torch.allclose(make_sde(name).prior_logp(z), expected)


# ------------------------------------------------------------------------------------------ discretisations


def test_ve_discretize_smld():
  sde = make_sde('ve')
  x = torch.randn(3, 2)
  t = torch.tensor([1.0, 0.5, 1e-5])
  f, G = sde.discretize(x, t)
  k = (t * 999).long()
  sigmas = sde.discrete_sigmas
  assert torch.equal(f, torch.zeros_like(x))
  assert G[0] == torch.sqrt(sigmas[999] ** 2 - sigmas[998] ** 2)
  assert G[1] == torch.sqrt(sigmas[k[1]] ** 2 - sigmas[k[1] - 1] ** 2)
  assert G[2] == sigmas[0]  # σ_{−1} = 0


def test_vp_discretize_ddpm():
  sde = make_sde('vp')
  x = torch.randn(2, 3, 4, 4)
  t = torch.tensor([0.3, 1e-3])
  f, G = sde.discretize(x, t)
  k = (t * 999).long()
  assert torch.equal(k, torch.tensor([299, 0]))
  assert torch.allclose(f, torch.sqrt(sde.alphas[k])[:, None, None, None] * x - x)
  assert torch.equal(G, torch.sqrt(sde.discrete_betas[k]))


def test_subvp_discretize_euler_maruyama():
  sde = make_sde('subvp')
  x = torch.randn(2, 3)
  t = torch.tensor([0.3, 0.9])
  f, G = sde.discretize(x, t)
  drift, diffusion = sde.sde(x, t)
  assert torch.allclose(f, drift / 1000)
  assert torch.allclose(G, diffusion * math.sqrt(1 / 1000))


@pytest.mark.parametrize('name', ['ve', 'vp'])
def test_discrete_tables_follow_the_input_device(name):
  """B40: the σ / β lookups index tables on the inputs' device (meta here; CPU tables would raise)."""
  sde = make_sde(name)
  x = torch.empty(2, 3, 4, 4, device='meta')
  t = torch.empty(2, device='meta')
  f, G = sde.discretize(x, t)
  assert f.device.type == 'meta' and G.device.type == 'meta'


class _DeviceOnlyTable:
  """A discrete table that may be indexed only after .to(device), as B40 requires."""

  def __init__(self, table):
    self.table = table

  def to(self, device):
    return self.table.to(device)

  def __getitem__(self, index):
    raise AssertionError('table indexed before being moved to the device of the inputs (B40)')


@pytest.mark.parametrize('name, tables', [('ve', ['discrete_sigmas']), ('vp', ['discrete_betas', 'alphas'])])
def test_discrete_tables_are_moved_before_indexing(name, tables):
  sde = make_sde(name)
  x, t = torch.randn(2, 3), torch.tensor([0.5, 1e-5])
  expected = sde.discretize(x, t)
  for table in tables:
    setattr(sde, table, _DeviceOnlyTable(getattr(sde, table)))
  for got, want in zip(sde.discretize(x, t), expected):
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------ reverse SDE / ODE


@pytest.mark.parametrize('name', ['ve', 'vp', 'subvp'])
def test_reverse_sde_and_probability_flow(name):
  sde = make_sde(name)
  x = torch.randn(3, 3, 4, 4)
  t = torch.tensor([0.2, 0.5, 0.9])
  score = torch.randn_like(x)
  score_fn = lambda x_, t_: score  # may already include guidance
  drift, diffusion = sde.sde(x, t)
  f, G = sde.discretize(x, t)
  g2, G2 = (diffusion ** 2)[:, None, None, None], (G ** 2)[:, None, None, None]

  reverse = sde.reverse(score_fn)
  rev_drift, rev_diffusion = reverse.sde(x, t)
  assert torch.allclose(rev_drift, drift - g2 * score) and torch.equal(rev_diffusion, diffusion)
  rev_f, rev_G = reverse.discretize(x, t)
  assert torch.allclose(rev_f, f - G2 * score) and torch.equal(rev_G, G)

  flow = sde.reverse(score_fn, probability_flow=True)
  rev_drift, rev_diffusion = flow.sde(x, t)
  assert torch.allclose(rev_drift, drift - 0.5 * g2 * score)
  assert torch.equal(rev_diffusion, torch.zeros_like(diffusion))
  rev_f, rev_G = flow.discretize(x, t)
  assert torch.allclose(rev_f, f - 0.5 * G2 * score) and torch.equal(rev_G, torch.zeros_like(G))


# ------------------------------------------------------------------------------------------ get_sde


@pytest.mark.parametrize('name, cls, eps', [('vesde', sde_lib.VESDE, 1e-5), ('vpsde', sde_lib.VPSDE, 1e-3),
                                            ('subvpsde', sde_lib.subVPSDE, 1e-3)])
def test_get_sde(name, cls, eps):
  config = config_from_flat({'training.sde': name, 'model.sigma_min': 0.02, 'model.sigma_max': 40,
                             'model.beta_min': 0.2, 'model.beta_max': 10., 'model.num_scales': 77})
  sde, sampling_eps = sde_lib.get_sde(config)
  assert type(sde) is cls and sampling_eps == eps and sde.N == 77 and sde.T == 1
  if cls is sde_lib.VESDE:
    assert (sde.sigma_min, sde.sigma_max) == (0.02, 40)
  else:
    assert (sde.beta_0, sde.beta_1) == (0.2, 10.)


def test_get_sde_unknown_name():
  with pytest.raises(ValueError, match='training.sde'):
    sde_lib.get_sde(config_from_flat({'training.sde': 'ode', 'model.num_scales': 10}))


# ------------------------------------------------------------------------------------------ time conditioning


@pytest.mark.parametrize('file', ['score_ncsnpp_small_ve', 'score_ncsnpp_small_vp'])
def test_golden_network_time_and_perturbation(golden, file):
  record = golden(file)
  sde = sde_from_golden(record['sde'])
  for t, x, c in zip(record['eval_t'], record['eval_x'], record['eval_model_time_input']):
    assert_close_to_golden(sde.network_time(t), c, rtol=1e-6, name='time input')
    mean, std = sde.marginal_prob(record['batch_scaled'], t)
    assert_close_to_golden(mean + std[:, None, None, None] * record['z'], x, rtol=1e-5, name='eval_x')
  dsm = record['dsm']
  assert_close_to_golden(sde.marginal_std(dsm['t']), dsm['std'], rtol=1e-6, name='dsm std')


@pytest.mark.parametrize('which', ['ve', 'vp'])
def test_golden_classifier_time(golden, which):
  record = golden('classifier_resnet18_cond_small')['by_sde'][which]
  sde = sde_from_golden(record['sde'])
  assert_close_to_golden(sde.classifier_time(record['t']), record['model_time_input'], rtol=1e-6)


def test_discrete_network_times():
  """VE discrete round((T − t)(N − 1)) half-to-even, VP discrete float t·(N − 1), sub-VP 999·t."""
  t = torch.tensor([1.0, 0.5, 0.9995, 0.0])
  ve, vp, subvp = make_sde('ve'), make_sde('vp'), make_sde('subvp')
  labels = ve.network_time(t, continuous=False)
  assert labels.dtype == torch.int64
  assert labels.tolist() == [0, 500, 0, 999]  # 499.5 -> 500 (even), 0.4995 -> 0
  assert torch.equal(vp.network_time(t, continuous=False), t * 999)
  assert torch.equal(vp.network_time(t, continuous=True), t * 999)
  assert torch.equal(subvp.network_time(t, continuous=False), t * 999)
  assert torch.equal(ve.network_time(t, continuous=True), 0.01 * 5000 ** t)
  with pytest.raises(NotImplementedError):
    vp.classifier_time(t, continuous=False)


def test_vp_discrete_score_uses_alphas_cumprod_table():
  sde = make_sde('vp')
  seen = {}

  def network(x, c):
    seen['c'] = c
    return torch.ones_like(x)

  net = torch.nn.Module()
  net.forward = network
  t = torch.tensor([0.3, 0.7])
  score = get_score_fn(sde, net, continuous=False)(torch.zeros(2, 3), t)
  k = (t * 999).long()
  assert torch.equal(seen['c'], t * 999)
  assert torch.allclose(score, -1 / sde.sqrt_1m_alphas_cumprod[k][:, None].expand(2, 3))
  score = get_score_fn(make_sde('subvp'), net, continuous=False)(torch.zeros(2, 3), t)
  assert torch.allclose(score, -1 / make_sde('subvp').marginal_std(t)[:, None].expand(2, 3))


def test_wrappers_switch_train_and_eval_per_call():
  net = torch.nn.Module()
  modes = []
  net.forward = lambda x, c: (modes.append(net.training), x)[1]
  sde = make_sde('ve')
  x, t = torch.zeros(1, 2), torch.tensor([0.5])
  get_score_fn(sde, net, train=True)(x, t)
  get_classifier_fn(sde, net, train=False)(x, t)
  get_score_fn(sde, net, train=True)(x, t)
  assert modes == [True, False, True]


# ------------------------------------------------------------------------------------------ golden scores


def _check_golden_scores(record, model, sde):
  score_fn = get_score_fn(sde, model, train=False, continuous=True)
  with torch.no_grad():
    for t, x, expected in zip(record['eval_t'], record['eval_x'], record['eval_score']):
      assert_close_to_golden(score_fn(x, t), expected, name=f'score at t={t[0].item():g}')


def test_golden_scores_ve(golden, small_score_model_ve):
  record = golden('score_ncsnpp_small_ve')
  _check_golden_scores(record, small_score_model_ve, sde_from_golden(record['sde']))


def test_golden_scores_vp(golden, small_score_model_vp):
  """VP: the network sees 999·t and the score is −output / std(t)."""
  record = golden('score_ncsnpp_small_vp')
  sde = sde_from_golden(record['sde'])
  _check_golden_scores(record, small_score_model_vp, sde)
  with torch.no_grad():
    t, x = record['eval_t'][0], record['eval_x'][0]
    raw = small_score_model_vp.eval()(x, 999 * t)
  assert_close_to_golden(raw, record['eval_model_raw_output'][0], name='raw VP output')
  assert_close_to_golden(-raw / sde.marginal_std(t)[:, None, None, None], record['eval_score'][0])


@pytest.mark.parametrize('file', ['pc_step_small_ve', 'pc_step_small_vp'])
def test_golden_predictor_noise_scale(golden, file):
  """The discretisation's G equals the original predictor's at steps 0 and 700."""
  record = golden(file)
  sde = sde_from_golden(record['sde'])
  eps = record['sampling_eps']
  assert torch.equal(torch.linspace(1, eps, sde.N)[:5], record['timesteps_first5'])
  for case in record['cases'].values():
    _, G = sde.discretize(case['x_in'], case['t'])
    assert_close_to_golden(G, case['predictor_G'], rtol=1e-6, name='G')


def test_use_exact_float32_switches_tf32():
  from models.utils import use_exact_float32
  saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
  try:
    use_exact_float32()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    use_exact_float32(False)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
  finally:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ------------------------------------------------------------------------------------------ what the code asks an SDE


def test_langevin_alpha_per_sde():
  t = torch.tensor([1.0, 0.5, 1e-3])
  k = (t * 999).long()
  assert torch.equal(make_sde('ve').langevin_alpha(t), torch.ones(3))
  assert torch.equal(make_sde('vp').langevin_alpha(t), make_sde('vp').alphas[k])
  # sub-VP: the VP α table built from the same β₀, β₁, N (the original crashed, B31)
  assert torch.equal(make_sde('subvp').langevin_alpha(t), make_sde('vp').alphas[k])


def test_score_from_output_per_sde():
  t = torch.tensor([0.2, 0.9])
  output = torch.randn(2, 3)
  assert torch.equal(make_sde('ve').score_from_output(output, t), output)
  for name in ('vp', 'subvp'):
    sde = make_sde(name)
    assert torch.equal(sde.score_from_output(output, t), -output / sde.marginal_std(t)[:, None])


def test_ancestral_steps_follow_the_formulas():
  x, score, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.5, 1e-5])
  k = (t * 999).long()
  ve = make_sde('ve')
  sigma, previous = ve.discrete_sigmas[k], torch.tensor([ve.discrete_sigmas[k[0] - 1], 0.])
  torch.manual_seed(0)
  x_new, x_mean = ve.ancestral_step(x, score, t)
  torch.manual_seed(0)
  z = torch.randn_like(x)
  assert torch.allclose(x_mean, x + (sigma ** 2 - previous ** 2)[:, None] * score)
  std = torch.sqrt(previous ** 2 * (sigma ** 2 - previous ** 2) / sigma ** 2)
  assert torch.allclose(x_new, x_mean + std[:, None] * z)
  vp = make_sde('vp')
  beta = vp.discrete_betas[k]
  torch.manual_seed(0)
  x_new, x_mean = vp.ancestral_step(x, score, t)
  assert torch.allclose(x_mean, (x + beta[:, None] * score) / torch.sqrt(1 - beta)[:, None])
  assert torch.allclose(x_new, x_mean + torch.sqrt(beta)[:, None] * z)
  assert not make_sde('subvp').has_ancestral_step
  with pytest.raises(NotImplementedError, match='subVPSDE has no ancestral step'):
    make_sde('subvp').ancestral_step(x, score, t)


def test_tables_are_copied_to_a_device_once():
  sde = make_sde('vp')
  assert sde.table('alphas', 'cpu') is sde.table('alphas', torch.device('cpu'))
  meta = sde.table('alphas', 'meta')
  assert meta.device.type == 'meta' and sde.table('alphas', 'meta') is meta


class LinearSigmaSDE(sde_lib.SDE):
  """The README's example of a new SDE: dx = sqrt(2t) dw, so σ(t) = t; the network output is the score."""

  @classmethod
  def from_config(cls, config):
    return cls(N=config.model.num_scales)

  def sde(self, x, t):
    return torch.zeros_like(x), torch.sqrt(2 * t)

  def marginal_std(self, t):
    return t

  def marginal_prob(self, x, t):
    return x, self.marginal_std(t)

  def prior_sampling(self, shape):
    return torch.randn(*shape)

  def prior_logp(self, z):
    return -z[0].numel() / 2 * math.log(2 * math.pi) - (z ** 2).flatten(1).sum(1) / 2

  def network_time(self, t, continuous=True):
    return self.marginal_std(t)

  def score_from_output(self, output, t, continuous=True):
    return output


def test_a_new_sde_needs_one_class_and_its_registration():
  """A new SDE class, registered under a new name, drives get_sde, the wrappers, the loss and the samplers."""
  import losses
  import sampling
  import time_grids
  sde_lib.register_sde('linearsigma')(LinearSigmaSDE)
  try:
    sde, eps = sde_lib.get_sde(config_from_flat({'training.sde': 'LinearSigma', 'model.num_scales': 50}))
    assert type(sde) is LinearSigmaSDE and eps == 1e-5 and sde.N == 50
    net = torch.nn.Module()
    net.forward = lambda x, c: -x / c[:, None] ** 2  # the exact score for data at 0: p_t = N(0, t²)
    assert torch.equal(get_score_fn(sde, net)(torch.ones(2, 2), torch.tensor([0.5, 1.])),
                       -torch.tensor([[4., 4.], [1., 1.]]))
    assert losses.get_sde_loss_fn(sde, train=False)(net, torch.zeros(8, 2)) < 1e-10
    torch.manual_seed(0)
    exact = lambda x, t: -x / t[:, None] ** 2
    times = time_grids.time_grid('linear', sde, sde.N, 0.2)
    for predictor, corrector in (('reverse_diffusion', 'langevin'), ('euler_maruyama', 'ald')):
      pc = sampling.PCSettings(predictor, corrector, denoise=False)
      x = sampling.sample_pc(sampling.GuidedDenoiser(sde, exact), sde.prior_sampling((4000, 2)), times, pc)
      assert abs(x.std() - 0.2) < 0.02, (predictor, x.std())  # p_0.2 = N(0, 0.2²)
    with pytest.raises(NotImplementedError, match='LinearSigmaSDE has no ancestral step'):
      sampling.get_predictor('ancestral_sampling')(sde, exact)
  finally:
    del sde_lib._SDES['linearsigma']
