"""Networks (models/): structure against the golden manifests, outputs against the golden vectors, every NCSN++
option (embeddings, block types, progressive variants, FIR or naive resampling), FIR resampling against the naive
upfirdn2d, the classifier bodies and the EMA."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import layers
from models.ema import ExponentialMovingAverage
from models.ncsnpp import NCSNpp, get_sigmas
from models.resnet_cond import BasicBlock, Bottleneck, Classifier, ResNet_cond
from models.utils import get_classifier_fn, get_model, get_score_fn
from tests.conftest import resolve_golden_dir
from tests.helpers import (REPO_ROOT, assert_close_to_golden, config_from_flat, flatten_config, golden_form,
                           load_config, sde_from_golden, state_dict_from_recipe, state_dict_sha256)

SCORE_CONFIG = 'configs/score/cifar10_score_configs.py'
GOLDEN_DIR = resolve_golden_dir()
# File patterns of the golden format (a second golden set may use other seeds, SDEs and configs).
PATTERNS = {'small_score': 'score_ncsnpp_small_*.pt', 'full_score': 'score_ncsnpp_full_recipe_*.pt',
            'small_classifier': 'classifier_*_small.pt', 'full_classifier': 'classifier_*_full_recipe*.pt'}


def golden_names(kind):
  return sorted(path.stem for path in (GOLDEN_DIR / 'vectors').glob(PATTERNS[kind]))


MANIFESTS = sorted(path.stem for path in (GOLDEN_DIR / 'manifests').glob('*.json'))


def strip_module(state_dict):
  return {key[len('module.'):]: value for key, value in state_dict.items()}


def build_on_meta(config, name):
  """The registered network `name` without memory or random draws (for structure and counts)."""
  with torch.device('meta'):
    return get_model(name)(config)


def model_from_golden(record, name):
  """The network of a small golden file, with its stored weights, in eval mode."""
  model = get_model(name)(config_from_flat(record['config']))
  model.load_state_dict(strip_module(record['state_dict']))
  return model.eval()


@pytest.mark.parametrize('kind', PATTERNS)
def test_golden_files_are_found(kind):
  assert golden_names(kind), f'no {PATTERNS[kind]} in {GOLDEN_DIR / "vectors"}'


# ------------------------------------------------------------------------------------------------
# Manifests: keys, shapes, dtypes, state_dict order, parameter order, EMA order

def load_manifest(name):
  return json.loads((GOLDEN_DIR / 'manifests' / f'{name}.json').read_text())


def config_for_manifest(manifest):
  matches = sorted(REPO_ROOT.glob(f'configs/**/{manifest["source_config"]}'))
  assert len(matches) == 1, f'config file {manifest["source_config"]}: found {matches}'
  return load_config(matches[0].relative_to(REPO_ROOT))


@pytest.mark.parametrize('name', MANIFESTS)
def test_real_config_has_the_manifest_key_config(name):
  manifest = load_manifest(name)
  flat = flatten_config(config_for_manifest(manifest))
  mismatched = {key: (flat.get(key), value) for key, value in manifest['key_config'].items()
                if golden_form(flat.get(key, '<missing>')) != value}
  assert not mismatched


@pytest.mark.parametrize('name', MANIFESTS)
def test_model_structure_matches_manifest(name):
  manifest = load_manifest(name)
  model = build_on_meta(config_for_manifest(manifest), manifest['model_name'])
  state = model.state_dict()
  assert list(state) == [key[len('module.'):] for key in manifest['state_dict_order']]
  for key, tensor in state.items():
    entry = manifest['state_dict'][f'module.{key}']
    assert (list(tensor.shape), str(tensor.dtype).replace('torch.', '')) == (entry['shape'], entry['dtype']), key
  named = list(model.named_parameters())
  assert [f'module.{n}' for n, _ in named] == manifest['parameter_order']
  assert {f'module.{n}': p.numel() for n, p in named if not p.requires_grad} == manifest['non_trainable_params']
  assert sum(p.numel() for _, p in named) == manifest['total_params']
  assert sum(p.numel() for _, p in named if p.requires_grad) == manifest['trainable_params']
  buffers = {f'module.{n}': (list(b.shape), str(b.dtype).replace('torch.', '')) for n, b in model.named_buffers()}
  assert buffers == {n: (b['shape'], b['dtype']) for n, b in manifest['buffers'].items()}
  if 'ema_shadow_params_order' in manifest:
    order = manifest['ema_shadow_params_order']
    assert [f'module.{n}' for n, p in named if p.requires_grad] == order
    ema = ExponentialMovingAverage(model.parameters(), decay=manifest['ema_decay'])
    assert [list(s.shape) for s in ema.shadow_params] == [manifest['state_dict'][n]['shape'] for n in order]


# ------------------------------------------------------------------------------------------------
# Golden vectors: small models

@pytest.mark.parametrize('name', golden_names('small_score'))
def test_small_ncsnpp_network_output(golden, name):
  record = golden(name)
  model = model_from_golden(record, 'ncsnpp')
  expected = record.get('eval_model_raw_output', record['eval_score'])  # VE: the output is the score
  with torch.no_grad():
    for row in range(len(record['eval_t'])):
      out = model(record['eval_x'][row], record['eval_model_time_input'][row])
      assert out.dtype == torch.float32
      assert_close_to_golden(out, expected[row], name=f'{name} row {row}')


@pytest.mark.parametrize('name', golden_names('small_score'))
def test_small_ncsnpp_score_fn(golden, name):
  record = golden(name)
  model = model_from_golden(record, 'ncsnpp')
  score_fn = get_score_fn(sde_from_golden(record['sde']), model, train=False, continuous=True)
  with torch.no_grad():
    for row in range(len(record['eval_t'])):
      score = score_fn(record['eval_x'][row], record['eval_t'][row])
      assert_close_to_golden(score, record['eval_score'][row], name=f'{name} score row {row}')


def check_classifier_case(model, case):
  """Eval logits, the guidance gradient, train-mode logits, and BatchNorm buffers after one train forward."""
  x, c, labels = case['x'], case['model_time_input'], case['labels']
  model.eval()
  with torch.no_grad():
    assert_close_to_golden(model(x, c), case['logits_eval'], name='logits_eval')
  x_in = x.clone().requires_grad_(True)
  log_prob = torch.log(torch.softmax(model(x_in, c), dim=-1) + 1e-8)
  grad, = torch.autograd.grad(log_prob[torch.arange(len(labels)), labels].sum(), x_in)
  assert_close_to_golden(grad, case['log_prob_grad_eval'], name='log_prob_grad_eval')
  model.train()
  with torch.no_grad():
    assert_close_to_golden(model(x, c), case['logits_train_mode'], name='logits_train_mode')
  state = model.state_dict()
  for key, expected in case['bn_buffers_after_train_forward'].items():
    actual = state[key[len('module.'):]]
    if expected.is_floating_point():
      assert_close_to_golden(actual, expected, name=key)
    else:
      assert torch.equal(actual, expected), key


@pytest.mark.parametrize('name', golden_names('small_classifier'))
def test_small_classifier(golden, name):
  record = golden(name)
  for sde_name, case in record['by_sde'].items():
    check_classifier_case(model_from_golden(record, 'classifier'), case)
    logits_fn = get_classifier_fn(sde_from_golden(case['sde']), model_from_golden(record, 'classifier'),
                                  train=False, continuous=True)
    with torch.no_grad():
      assert_close_to_golden(logits_fn(case['x'], case['t']), case['logits_eval'], name=f'{sde_name} logits_fn')


# ------------------------------------------------------------------------------------------------
# Golden vectors: full-size models with recipe weights

def recipe_state(record, model, config):
  """Recipe weights for `model`, verified against the file's per-tensor checksums."""
  state = state_dict_from_recipe(record['param_recipe'], {f'module.{k}': v for k, v in model.state_dict().items()},
                                 config)
  for key, sums in record['param_checksums'].items():
    tensor = state[key].double()
    assert tensor.sum().item() == pytest.approx(sums['sum'], rel=1e-12, abs=1e-9), key
    assert tensor.abs().sum().item() == pytest.approx(sums['abs_sum'], rel=1e-12, abs=1e-9), key
    assert tensor.flatten()[0].item() == sums['first'], key
  return state


def stored_sigma_table(golden, config):
  """The float64 sigma table as a small golden file stores it, for the same sigma_min/sigma_max/num_scales.

  The generator's platform exp rounds some entries 1 ulp differently from NumPy here, so recomputed tables
  agree only to 1e-15; the sha256 needs the stored bits.
  """
  fields = ('model.sigma_min', 'model.sigma_max', 'model.num_scales')
  for name in golden_names('small_score'):
    record = golden(name)
    if all(record['config'][f] == flatten_config(config)[f] for f in fields):
      return record['state_dict']['module.sigmas']
  raise AssertionError('no small golden file with this sigma table')


def builds_like_the_fixture(flat_config):
  """Whether a golden file's NCSN++ is the session fixture's (every model field and image shape equal)."""
  fixture = flatten_config(load_config(SCORE_CONFIG))
  return all(golden_form(fixture.get(key)) == value for key, value in flat_config.items()
             if key.startswith('model.') or key in ('data.image_size', 'data.num_channels', 'data.centered'))


@pytest.mark.parametrize('name', golden_names('full_score'))
def test_full_ncsnpp_recipe(full_ncsnpp_cifar10, golden, name):
  record = golden(name)
  config = config_from_flat(record['config'])
  model = full_ncsnpp_cifar10 if builds_like_the_fixture(record['config']) else get_model('ncsnpp')(config)
  state = recipe_state(record, model, config)
  stored_sigmas = stored_sigma_table(golden, config)
  assert torch.allclose(state['module.sigmas'], stored_sigmas, rtol=1e-15, atol=0)
  state['module.sigmas'] = stored_sigmas
  assert state_dict_sha256(state) == record['state_dict_sha256']
  model.load_state_dict(strip_module(state))
  score_fn = get_score_fn(sde_from_golden(record['sde']), model, train=False, continuous=True)
  with torch.no_grad():
    assert_close_to_golden(score_fn(record['x'], record['t']), record['score'], name=f'{name} score')


@pytest.mark.parametrize('name', golden_names('full_classifier'))
def test_full_classifier_recipe(golden, name):
  record = golden(name)
  config = config_from_flat(record['config'])
  model = get_model(config.classifier.name)(config)
  state = recipe_state(record, model, config)
  assert state_dict_sha256(state) == record['state_dict_sha256']
  for case in record['by_sde'].values():
    model.load_state_dict(strip_module(state))
    check_classifier_case(model, case)


# ------------------------------------------------------------------------------------------------
# NCSN++ options beyond the CIFAR configs: module lists, parameter counts, forward passes

def expected_module_count(arch, image_size):
  """len(all_modules), counted independently: [Fourier] [2 Linear] conv; per level L: R blocks (+ attention),
  a down module and a pyramid module below the top level; middle: block, attention, block; per level on the way
  up: R + 1 blocks (+ one attention), pyramid heads, an up module; GroupNorm and conv unless output_skip."""
  L, R = len(arch.ch_mult), arch.num_res_blocks
  attn = [int(image_size // 2 ** l in arch.attn_resolutions) for l in range(L)]
  count = (arch.embedding_type == 'fourier') + 2 * arch.conditional + 1 + 3
  for l in range(L):
    count += R * (1 + attn[l]) + (l < L - 1) * (1 + (arch.progressive_input != 'none'))
    count += (R + 1) + attn[l] + (l > 0)
    if arch.progressive == 'output_skip':
      count += 2
    elif arch.progressive == 'residual':
      count += 2 if l == L - 1 else 1
  return count + 2 * (arch.progressive != 'output_skip')


def score_config(**model_overrides):
  config = load_config(SCORE_CONFIG)
  config.model.update(model_overrides)
  return config


VP_POSITIONAL = dict(embedding_type='positional', scale_by_sigma=False)


@pytest.mark.parametrize('overrides, centered, entries, scalars, tensors', [
    (dict(VP_POSITIONAL), True, 94, 107_521_411, 962),
    (dict(VP_POSITIONAL, num_res_blocks=4), True, 58, 62_693_251, 570),
    (dict(VP_POSITIONAL, num_res_blocks=4, fir=False, progressive_input='none'), True, 55, 61_804_419, None),
    (dict(VP_POSITIONAL, fir=False, progressive_input='none'), True, 91, 106_632_579, None),
], ids=['positional-8', 'vp-4', 'ddpmpp-4', 'ddpmpp-8'])
def test_full_size_variant_counts(overrides, centered, entries, scalars, tensors):
  config = score_config(**overrides)
  config.data.centered = centered
  model = build_on_meta(config, 'ncsnpp')
  trainable = [p for p in model.parameters() if p.requires_grad]
  assert len(model.all_modules) == entries == expected_module_count(config.model, config.data.image_size)
  assert sum(p.numel() for p in trainable) == scalars
  if tensors is not None:
    assert len(trainable) == tensors
  assert 'all_modules.0.W' not in model.state_dict()
  assert model.state_dict()['all_modules.0.weight'].shape == (512, 128)


def small_config(**model_overrides):
  """A small NCSN++ config (16x16 images, nf 16, 3 levels, one block) with the CIFAR flags otherwise."""
  config = score_config(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
  config.data.image_size = 16
  config.model.update(model_overrides)
  return config


OPTION_CASES = {
    'cifar-flags': {},
    'ddpm-fir': dict(resblock_type='ddpm', resamp_with_conv=False),
    'ddpm-fir-fused-upconv': dict(resblock_type='ddpm', resamp_with_conv=True),
    'ddpm-nearest-conv': dict(resblock_type='ddpm', fir=False, resamp_with_conv=True),
    'ddpm-nearest': dict(resblock_type='ddpm', fir=False, resamp_with_conv=False),
    'biggan-naive': dict(fir=False),
    'output-skip': dict(progressive='output_skip'),
    'output-skip-nearest': dict(progressive='output_skip', fir=False),
    'input-skip-cat': dict(progressive_input='input_skip', progressive_combine='cat'),
    'input-skip-sum': dict(progressive_input='input_skip', progressive_combine='sum'),
    'input-skip-avgpool': dict(progressive_input='input_skip', fir=False),
    'residual-output': dict(progressive='residual'),
    'residual-output-nearest': dict(progressive='residual', fir=False, resblock_type='ddpm'),
    'ddpmpp': dict(fir=False, progressive_input='none'),
    'positional': dict(VP_POSITIONAL),
    'unconditional': dict(conditional=False),
    'plain-sums-elu-attn-everywhere': dict(skip_rescale=False, nonlinearity='elu', attn_resolutions=(16, 8, 4)),
    'relu-lrelu-no-dropout': dict(nonlinearity='lrelu', dropout=0.0),
}


@pytest.mark.parametrize('overrides', OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_option_combination_builds_and_runs(overrides):
  torch.manual_seed(0)
  config = small_config(**overrides)
  model = NCSNpp(config).eval()
  assert len(model.all_modules) == expected_module_count(config.model, config.data.image_size)
  x = torch.rand(2, 3, 16, 16)
  c = torch.tensor([10.0, 700.0]) if config.model.embedding_type == 'positional' else torch.tensor([0.5, 3.0])
  with torch.no_grad():
    out = model(x, c)
  assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
  assert out.abs().max() > 0


def test_option_modules_have_the_originals_shapes():
  modules = NCSNpp(small_config(progressive_input='input_skip', progressive_combine='cat')).all_modules
  combines = [m for m in modules if isinstance(m, layers.Combine)]
  assert [tuple(m.Conv_0.weight.shape) for m in combines] == [(16, 3, 1, 1), (32, 3, 1, 1)]
  modules = NCSNpp(small_config(progressive='residual')).all_modules
  ups = [m for m in modules if isinstance(m, layers.Upsample)]
  assert [tuple(m.Conv2d_0.weight.shape) for m in ups] == [(32, 32, 3, 3), (16, 32, 3, 3)]
  modules = NCSNpp(small_config(progressive='output_skip', init_scale=0.0)).all_modules
  heads = [m for m in modules if isinstance(m, nn.Conv2d) and m.out_channels == 3]
  assert len(heads) == 3 and all(h.weight.abs().max() < 1e-4 for h in heads)
  names = [type(m).__name__ for m in NCSNpp(small_config(resblock_type='ddpm')).all_modules]
  assert names.count('Upsample') == 2 and names.count('Downsample') == 4  # 2 resamplers + 2 pyramid convs
  assert names.count('ResnetBlockDDPMpp') == 3 + 2 + 6 and 'ResnetBlockBigGANpp' not in names


def test_positional_scale_by_sigma_divides_by_the_float64_table_entry():
  torch.manual_seed(0)
  plain = NCSNpp(small_config(embedding_type='positional', scale_by_sigma=False)).eval()
  scaled = NCSNpp(small_config(embedding_type='positional', scale_by_sigma=True)).eval()
  scaled.load_state_dict(plain.state_dict())
  x, c = torch.rand(2, 3, 16, 16), torch.tensor([3.7, 500.2])
  with torch.no_grad():
    out = scaled(x, c)
    expected = plain(x, c).double() / scaled.sigmas[torch.tensor([3, 500])].reshape(2, 1, 1, 1)
  assert out.dtype == torch.float64 and torch.equal(out, expected)


def test_edm_preconditioning_wraps_the_same_network():
  """score = -x_c/(σ² + σ_d²) + σ_d·F(x_c/√(σ² + σ_d²))/(σ·√(σ² + σ_d²)), F the network without ÷σ or 2x - 1."""
  torch.manual_seed(0)
  wrapped = NCSNpp(small_config(preconditioning='edm', sigma_data=0.4)).eval()
  plain = NCSNpp(small_config(scale_by_sigma=False)).eval()
  plain.centered = True
  plain.load_state_dict({k: v for k, v in wrapped.state_dict().items() if k != 'sigma_data'})
  x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.3, 4.0])
  s, centred = sigma.reshape(2, 1, 1, 1), x - 0.5
  scale = torch.sqrt(s ** 2 + 0.4 ** 2)
  with torch.no_grad():
    expected = -centred / scale ** 2 + 0.4 * plain(centred / scale, sigma) / (s * scale)
    assert torch.allclose(wrapped(x, sigma), expected, atol=1e-6)


def test_edm_preconditioning_with_a_zero_network_is_the_exact_gaussian_score():
  """F = 0 leaves the score of N(0.5, σ_d²I) noised to σ: what the network then has to learn is the rest."""
  model = NCSNpp(small_config(preconditioning='edm', sigma_data=0.3)).eval()
  last = model.all_modules[-1]
  nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
  x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.05, 2.0])
  with torch.no_grad():
    score = model(x, sigma)
  expected = -(x - 0.5) / (sigma.reshape(2, 1, 1, 1) ** 2 + 0.3 ** 2)
  assert torch.allclose(score, expected, atol=1e-6)


def test_edm_preconditioning_needs_the_fourier_sigma_embedding():
  with pytest.raises(AssertionError, match='σ input'):
    NCSNpp(small_config(preconditioning='edm', **VP_POSITIONAL))


def test_unconditional_model_ignores_time_but_keeps_dense_layers():
  torch.manual_seed(0)
  model = NCSNpp(small_config(conditional=False, scale_by_sigma=False)).eval()
  assert not any(isinstance(m, nn.Linear) for m in model.all_modules)
  assert all(hasattr(m, 'Dense_0') for m in model.all_modules if isinstance(m, layers.ResnetBlockBigGANpp))
  x = torch.rand(2, 3, 16, 16)
  with torch.no_grad():
    assert torch.equal(model(x, torch.tensor([0.1, 0.2])), model(x, torch.tensor([7.0, 30.0])))


def test_dropout_only_in_train_mode():
  torch.manual_seed(0)
  model = NCSNpp(small_config(init_scale=1.0, dropout=0.5))
  x, c = torch.rand(2, 3, 16, 16), torch.tensor([0.5, 3.0])
  with torch.no_grad():
    model.train()
    assert not torch.equal(model(x, c), model(x, c))
    model.eval()
    assert torch.equal(model(x, c), model(x, c))


def test_ncsnpp_traces_as_one_graph_for_torch_compile():
  """No graph breaks (the FIR weights and the module walk are traceable), so `sampling.compile` gets one graph."""
  model = NCSNpp(small_config()).eval()
  try:
    with torch.no_grad():
      explanation = torch._dynamo.explain(model)(torch.rand(2, 3, 16, 16), torch.tensor([0.5, 3.0]))
  finally:
    torch._dynamo.reset()
  assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_fourier_embedding_requires_continuous_training():
  config = small_config()
  config.training.continuous = False
  with pytest.raises(AssertionError):
    NCSNpp(config)


def test_same_seed_same_initialisation_and_sigma_table():
  config = small_config()
  torch.manual_seed(3)
  first = NCSNpp(config).state_dict()
  torch.manual_seed(3)
  second = NCSNpp(config).state_dict()
  assert all(torch.equal(first[k], second[k]) for k in first)
  assert first['sigmas'].dtype == torch.float64 and first['sigmas'][0].item() == pytest.approx(50.0, rel=1e-15)
  assert torch.equal(first['sigmas'], torch.tensor(get_sigmas(config)))


# ------------------------------------------------------------------------------------------------
# Initialisers and small layers

@pytest.mark.parametrize('scale', [1.0, 0.1, 0.0])
def test_default_init_is_fan_avg_uniform(scale):
  torch.manual_seed(0)
  w = layers.default_init(scale)((64, 32, 3, 3))
  bound = np.sqrt(3 * (scale or 1e-10) / ((32 * 9 + 64 * 9) / 2))
  assert w.abs().max().item() <= bound * (1 + 1e-6)
  assert w.abs().max().item() > 0.99 * bound
  assert abs(w.mean().item()) < 0.02 * bound


def test_nin_is_a_transposed_linear_layer():
  nin = layers.NIN(5, 7)
  x = torch.randn(2, 5, 3, 4)
  expected = torch.einsum('bchw,cd->bdhw', x, nin.W) + nin.b[None, :, None, None]
  assert torch.allclose(nin(x), expected, atol=1e-6)


def test_attention_block_matches_explicit_softmax_attention():
  torch.manual_seed(0)
  block = layers.AttnBlockpp(8, skip_rescale=True, init_scale=1.0)
  x = torch.randn(2, 8, 4, 4)
  h = block.GroupNorm_0(x)
  q, k, v = (block.NIN_0(h), block.NIN_1(h), block.NIN_2(h))
  w = torch.softmax(torch.einsum('bchw,bcij->bhwij', q, k).reshape(2, 4, 4, 16) * 8 ** -0.5, dim=-1)
  o = torch.einsum('bhwij,bcij->bchw', w.reshape(2, 4, 4, 4, 4), v)
  assert torch.allclose(block(x), (x + block.NIN_3(o)) / np.sqrt(2), atol=1e-5)


def test_embeddings():
  fourier = layers.GaussianFourierProjection(embedding_size=4, scale=16)
  assert not fourier.W.requires_grad
  u = torch.tensor([0.3, -1.2])
  proj = u[:, None] * fourier.W[None] * 2 * np.pi
  assert torch.equal(fourier(u), torch.cat([proj.sin(), proj.cos()], dim=1))
  emb = layers.get_timestep_embedding(torch.tensor([0.0, 999.0]), 7)
  assert emb.shape == (2, 7) and torch.equal(emb[:, -1], torch.zeros(2))
  freqs = torch.exp(-torch.arange(3.0) * np.log(10000) / 2)
  assert torch.allclose(emb[1, :3], torch.sin(999 * freqs)) and torch.allclose(emb[1, 3:6], torch.cos(999 * freqs))


@pytest.mark.parametrize('name, expected', [('swish', nn.SiLU), ('elu', nn.ELU), ('relu', nn.ReLU),
                                            ('lrelu', nn.LeakyReLU)])
def test_get_act(name, expected):
  act = layers.get_act(small_config(nonlinearity=name))
  assert isinstance(act, expected)
  if name == 'lrelu':
    assert act.negative_slope == 0.2


# ------------------------------------------------------------------------------------------------
# FIR resampling against the naive upfirdn2d

TAPS = [(1, 3, 3, 1), (1, 2, 3), (1, 1), (2, 1, 0.5, 0.25, 1), ((1, 2), (3, 5))]


@pytest.mark.parametrize('taps', TAPS, ids=str)
def test_fir_down_and_up_sampling_match_upfirdn2d(taps):
  x = torch.randn(2, 3, 8, 10, dtype=torch.float64)
  p = len(taps) - 2
  down = layers.upfirdn2d_reference(x, taps, down=2, pad=((p + 1) // 2, p // 2))
  up = layers.upfirdn2d_reference(x, taps, up=2, pad=((p + 1) // 2 + 1, p // 2), gain=4)
  assert torch.allclose(layers.downsample_2d(x, taps), down, atol=1e-12)
  assert torch.allclose(layers.upsample_2d(x, taps), up, atol=1e-12)
  assert up.shape[-2:] == (16, 20) and down.shape[-2:] == (4, 5)


def test_fir_kernel_is_the_normalised_outer_product():
  k = layers.fir_kernel_2d([1, 3, 3, 1])
  assert torch.equal(k, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
  x = torch.zeros(1, 1, 4, 4)
  x[0, 0, 1, 1] = 1.0
  up = layers.upsample_2d(x)  # impulse at (1,1) lands on (2,2) of the zero-inserted grid, padded 2 before
  assert torch.allclose(up[0, 0, 1:5, 1:5], 4 * k) and up.sum() == pytest.approx(4.0)


def random_fir_conv(in_ch, out_ch, **kwargs):
  torch.manual_seed(1)
  conv = layers.FIRConv2d(in_ch, out_ch, kernel=3, **kwargs).double()
  nn.init.normal_(conv.bias)
  return conv


def test_fused_fir_upsample_conv_equals_its_stated_equivalent():
  """Spec §2.9.5: FIR up-sampling with 3 zeros of padding around the (2H−1) grid, then a valid 3x3 conv."""
  conv = random_fir_conv(3, 5, up=True)
  x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
  blurred = layers.upfirdn2d_reference(x, conv.resample_kernel, up=2, pad=(3, 2), gain=4)  # 2H grid = (2H−1) + 1
  expected = F.conv2d(blurred, conv.weight) + conv.bias[None, :, None, None]
  out = conv(x)
  assert out.shape == (2, 5, 12, 14) and torch.allclose(out, expected, atol=1e-10)
  # In the interior it is "upsample_2d, then conv3x3 with padding 1"; the border differs.
  separate = F.conv2d(layers.upsample_2d(x), conv.weight, conv.bias, padding=1)
  assert torch.allclose(out[..., 1:-1, 1:-1], separate[..., 1:-1, 1:-1], atol=1e-10)
  assert not torch.allclose(out, separate, atol=1e-6)


def test_fir_conv_downsample_blurs_then_strides():
  conv = random_fir_conv(4, 6, down=True)
  x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
  blurred = layers.upfirdn2d_reference(x, conv.resample_kernel, pad=(2, 2))
  expected = F.conv2d(blurred, conv.weight, stride=2) + conv.bias[None, :, None, None]
  assert torch.allclose(conv(x), expected, atol=1e-10) and expected.shape[-2:] == (4, 4)


def test_stand_alone_resamplers_without_fir():
  x = torch.randn(2, 4, 6, 6)
  assert torch.equal(layers.Upsample(4, fir=False)(x), F.interpolate(x, scale_factor=2, mode='nearest'))
  up = layers.Upsample(4, 5, with_conv=True, fir=False)
  assert torch.allclose(up(x), up.Conv_0(F.interpolate(x, scale_factor=2, mode='nearest')))
  assert torch.allclose(layers.Downsample(4, fir=False)(x), F.avg_pool2d(x, 2))
  down = layers.Downsample(4, 5, with_conv=True, fir=False)
  expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.Conv_0.weight, down.Conv_0.bias, stride=2)
  assert torch.allclose(down(x), expected) and expected.shape[-2:] == (3, 3)
  assert torch.allclose(layers.naive_downsample_2d(x), F.avg_pool2d(x, 2), atol=1e-6)


def test_fir_weights_made_under_inference_mode_still_support_autograd():
  x = torch.randn(1, 11, 8, 8)  # a channel count no other test uses: fresh cached weights
  with torch.inference_mode():
    layers.downsample_2d(x)
    layers.upsample_2d(x)
  y = x.clone().requires_grad_(True)
  (layers.downsample_2d(y).sum() + layers.upsample_2d(y).sum()).backward()
  assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Classifier bodies

def classifier_config(model='resnet18_cond', width=4, classes=10, nf=8):
  config = load_config('configs/classifier/cifar10_classifier_resnet18_cond_configs.py')
  config.classifier.update(model=model, resnet_base_width=width, classes=classes, nf=nf)
  return config


def test_classifier_input_gradient_in_train_mode_has_no_inplace_error():
  model = Classifier(classifier_config(width=6)).train()  # B38: temb is added out of place
  x = torch.rand(3, 3, 32, 32, requires_grad=True)
  logits = model(x, torch.tensor([0.1, 1.0, 20.0]))
  grad, = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 0].sum(), x, create_graph=True)
  grad.square().sum().backward()  # double backward, as the DLSM loss does
  assert logits.shape == (3, 10) and torch.isfinite(grad).all()


def test_resnet34_cond_layout_and_widths():
  model = Classifier(classifier_config('resnet34_cond', width=6, classes=100))
  body = model.classifier.classifier
  assert [len(getattr(body, f'layer{i}')) for i in range(1, 5)] == [3, 4, 6, 3]
  assert body.linear.weight.shape == (100, 48) and body.dense_4.weight.shape == (48, 32)
  assert model(torch.rand(2, 3, 32, 32), torch.tensor([0.5, 2.0])).shape == (2, 100)


def test_bottleneck_body():
  body = ResNet_cond(Bottleneck, [1, 1, 1, 1], num_classes=7, temb_dim=12, base_width=4)
  assert body.linear.in_features == 32 * Bottleneck.expansion and isinstance(body.layer1[0].shortcut[0], nn.Conv2d)
  assert body(torch.rand(2, 3, 32, 32), torch.randn(2, 12)).shape == (2, 7)
  assert isinstance(ResNet_cond(BasicBlock, [1, 1, 1, 1]).layer1[0].shortcut, nn.Sequential)


@pytest.mark.parametrize('size', [8, 16])
def test_classifier_at_one_channel_and_small_sizes(size):
  config = classifier_config(width=4)
  config.data.update(image_size=size, num_channels=1)
  model = Classifier(config).train()
  x = torch.rand(3, 1, size, size, requires_grad=True)
  logits = model(x, torch.tensor([0.1, 1.0, 5.0]))
  grad, = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 0].sum(), x, create_graph=True)
  assert logits.shape == (3, 10) and grad.shape == x.shape and torch.isfinite(grad).all()
  colour = Classifier(classifier_config(width=4)).state_dict()
  grey = model.state_dict()
  assert list(grey) == list(colour)  # same checkpoint keys; only conv1 reads one channel
  assert [k for k in grey if grey[k].shape != colour[k].shape] == ['classifier.classifier.conv1.weight']
  assert grey['classifier.classifier.conv1.weight'].shape == (4, 1, 3, 3)


def test_classifier_at_32x32x3_keeps_the_golden_keys_shapes_and_logits(golden):
  record = golden('classifier_resnet18_cond_small')
  config = config_from_flat(record['config'])
  model = get_model('classifier')(config)
  golden_state = strip_module(record['state_dict'])
  assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape)
                                                                        for k, v in golden_state.items()}
  for case in record['by_sde'].values():  # fresh weights per case: train-mode passes move the BatchNorm statistics
    model.load_state_dict(golden_state)
    check_classifier_case(model, case)


def test_unknown_classifier_model_is_rejected():
  with pytest.raises(ValueError, match='resnet50_cond'):
    Classifier(classifier_config('resnet50_cond'))


# ------------------------------------------------------------------------------------------------
# EMA

def test_ema_update_follows_the_warmup_decay():
  params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.ones(2), requires_grad=False)]
  ema = ExponentialMovingAverage(params, decay=0.999)
  assert len(ema.shadow_params) == 1
  with torch.no_grad():
    params[0].fill_(1.0)
  ema.update(params)
  ema.update(params)
  d1, d2 = 2 / 11, 3 / 12
  expected = 1 - d2 * d1  # s1 = 1 - d1, s2 = s1 - (1 - d2)(s1 - 1)
  assert torch.allclose(ema.shadow_params[0], torch.full((3,), expected))
  assert ema.state_dict()['num_updates'] == 2 and ema.state_dict()['decay'] == 0.999


def test_ema_copy_store_restore_and_validation():
  model = nn.Linear(3, 2)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
  original = [p.detach().clone() for p in model.parameters()]
  shadows = [torch.full_like(p, 5.0) for p in model.parameters()]
  ema.load_state_dict({'decay': 0.9, 'num_updates': 7, 'shadow_params': shadows})
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  assert all(torch.equal(p, torch.full_like(p, 5.0)) for p in model.parameters())
  ema.restore(model.parameters())
  assert all(torch.equal(p, o) for p, o in zip(model.parameters(), original))
  assert ema.num_updates == 7 and ema.shadow_params[0] is not shadows[0]
  with pytest.raises(ValueError, match='3 shadow'):
    ema.load_state_dict({'decay': 0.9, 'num_updates': 0, 'shadow_params': shadows + shadows[:1]})
  with pytest.raises(ValueError, match='shape'):
    ema.load_state_dict({'decay': 0.9, 'num_updates': 0, 'shadow_params': shadows[::-1]})
  with pytest.raises(ValueError, match='does not match'):
    ema.copy_to(list(model.parameters())[:1])


# ------------------------------------------------------------------------------------------------
# Package

def test_importing_models_registers_networks_without_tensorflow():
  code = ("import sys, models; from models.utils import get_model; "
          "assert get_model('ncsnpp').__name__ == 'NCSNpp' and get_model('classifier').__name__ == 'Classifier'; "
          "assert 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, check=True)
