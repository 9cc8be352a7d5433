"""Checkpoint I/O: the original layouts (manifests), strict prefix-tolerant loading, NumPy scalars, atomicity, resume."""
import filecmp
import json
import os
import pickle
import zipfile
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch

from models import checkpoint as ckpt
from models import layers
from models.ema import ExponentialMovingAverage
from models.ncsnpp import NCSNpp
from models.utils import create_classifier, create_model
from tests.conftest import resolve_golden_dir
from tests.helpers import REPO_ROOT, config_from_flat, load_config

MANIFESTS = {
    'score_cifar10': ('configs/score/cifar10_score_configs.py', create_model),
    'score_cifar100': ('configs/score/cifar100_score_configs.py', create_model),
    'classifier_cifar10_resnet18_cond': ('configs/classifier/cifar10_classifier_resnet18_cond_configs.py',
                                         create_classifier),
    'classifier_cifar100_resnet34_cond': ('configs/classifier/cifar100_classifier_resnet34_cond_configs.py',
                                          create_classifier),
}


def _meta_default_init(scale=1.0):
  del scale

  def init(shape, dtype=torch.float32, device=None):
    return torch.empty(*shape, dtype=dtype)

  return init


@contextmanager
def meta_construction():
  """Build full-size models without allocating or initialising weights (layouts only)."""
  with torch.device('meta'):
    try:
      torch.empty(1, 1).copy_(layers.default_init()((1, 1)))
      patch = None
    except RuntimeError:  # default_init pins its device to CPU: patch it for the build
      patch = mock.patch.object(layers, 'default_init', _meta_default_init)
    if patch is None:
      yield
    else:
      with patch:
        yield


def build_on_meta(config_path):
  config = load_config(config_path)
  config.device = 'meta'
  build = create_model if 'score' in config_path else create_classifier
  with meta_construction():
    return build(config)


def manifest(golden_dir, name):
  with open(golden_dir / 'manifests' / f'{name}.json') as file:
    return json.load(file)


def dtype_name(tensor):
  return str(tensor.dtype).replace('torch.', '')


def give_every_trainable_parameter_a_step(model, optimizer, ema=None):
  for param in model.parameters():
    if param.requires_grad:
      param.grad = torch.zeros_like(param)
  optimizer.step()
  if ema is not None:
    ema.update(model.parameters())


# ------------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize('name', sorted(MANIFESTS))
def test_saved_layout_matches_manifest(tmp_path, golden_dir, name):
  """Built from the real config and saved by save_checkpoint: keys, shapes, dtypes, order, optimizer, EMA."""
  expected = manifest(golden_dir, name)
  config_path, _ = MANIFESTS[name]
  model = build_on_meta(config_path)
  is_score = name.startswith('score')
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
  ema = ExponentialMovingAverage(model.parameters(), decay=expected['ema_decay']) if is_score else None
  give_every_trainable_parameter_a_step(model, optimizer, ema)
  path = tmp_path / 'checkpoint_1.pth'
  ckpt.save_checkpoint(path, model, optimizer, step=1, ema=ema)
  saved = ckpt.load_checkpoint_file(path, device='meta')

  assert list(saved) == ['optimizer', 'model', 'step', 'ema'] if is_score else ['optimizer', 'model', 'step']
  state = saved['model']
  assert list(state) == expected['state_dict_order']
  assert {k: {'shape': list(v.shape), 'dtype': dtype_name(v)} for k, v in state.items()} == expected['state_dict']

  parameter_names = ['module.' + n for n, _ in model.named_parameters()]
  assert parameter_names == expected['parameter_order']
  frozen = [i for i, (_, p) in enumerate(model.named_parameters()) if not p.requires_grad]
  assert [expected['parameter_order'][i] for i in frozen] == list(expected['non_trainable_params'])
  groups = saved['optimizer']['param_groups']
  assert len(groups) == 1 and groups[0]['params'] == list(range(len(expected['parameter_order'])))
  assert sorted(saved['optimizer']['state']) == [i for i in range(len(parameter_names)) if i not in frozen]

  if is_score:
    shadows = saved['ema']['shadow_params']
    assert len(shadows) == len(expected['ema_shadow_params_order']) == expected['num_trainable_parameter_tensors']
    assert [list(s.shape) for s in shadows] == [expected['state_dict'][k]['shape']
                                               for k in expected['ema_shadow_params_order']]
    assert saved['ema']['decay'] == expected['ema_decay'] and saved['ema']['num_updates'] == 1


def test_full_ncsnpp_state_matches_manifest(golden_dir, full_ncsnpp_cifar10):
  """The real (non-meta) CIFAR-10 NCSN++: same prefixed keys, shapes, dtypes and parameter counts."""
  expected = manifest(golden_dir, 'score_cifar10')
  state = ckpt.prefixed_state_dict(full_ncsnpp_cifar10)
  assert list(state) == expected['state_dict_order']
  assert {k: {'shape': list(v.shape), 'dtype': dtype_name(v)} for k, v in state.items()} == expected['state_dict']
  params = list(full_ncsnpp_cifar10.parameters())
  assert sum(p.numel() for p in params) == expected['total_params']
  assert sum(p.numel() for p in params if p.requires_grad) == expected['trainable_params']


# ------------------------------------------------------------------------------------------ strict loading


def golden_state(golden, file):
  return golden(file)['state_dict']


def test_prefixed_and_plain_keys_load_the_same(golden, small_classifier):
  state = golden_state(golden, 'classifier_resnet18_cond_small')
  assert all(key.startswith('module.') for key in state)
  plain = {key[len('module.'):]: value for key, value in state.items()}
  fresh = torch.nn.DataParallel(create_classifier(config_from_flat(golden('classifier_resnet18_cond_small')['config'])))
  ckpt.load_model_state(fresh, plain, what='classifier')
  ckpt.load_model_state(small_classifier, state, what='classifier')
  for (name, a), b in zip(small_classifier.state_dict().items(), fresh.module.state_dict().values()):
    assert torch.equal(a, b), name
    assert torch.equal(a, state['module.' + name]), name


def test_renamed_key_is_named(golden, small_score_model_ve):
  state = dict(golden_state(golden, 'score_ncsnpp_small_ve'))
  state['module.all_modules.3.weightX'] = state.pop('module.all_modules.3.weight')
  with pytest.raises(ValueError) as error:
    ckpt.load_model_state(small_score_model_ve, state, config_hint='configs/x.py')
  message = str(error.value)
  assert 'missing keys: all_modules.3.weight' in message
  assert 'unexpected keys: all_modules.3.weightX' in message
  assert 'configs/x.py' in message


def test_misshaped_key_is_named(golden, small_score_model_ve):
  state = dict(golden_state(golden, 'score_ncsnpp_small_ve'))
  state['module.all_modules.4.Conv_0.weight'] = torch.zeros(16, 16, 1, 1)
  with pytest.raises(ValueError, match=r'mis-shaped keys .*all_modules\.4\.Conv_0\.weight \(16, 16, 1, 1\) '
                                       r'vs model \(16, 16, 3, 3\)'):
    ckpt.load_model_state(small_score_model_ve, state)


def test_missing_fourier_vector_is_an_error(golden, small_score_model_ve):
  """B23: the frozen Fourier W is not in the EMA, so a loader must insist on finding it in 'model'."""
  state = dict(golden_state(golden, 'score_ncsnpp_small_ve'))
  del state['module.all_modules.0.W']
  with pytest.raises(ValueError, match=r'missing keys: all_modules\.0\.W'):
    ckpt.load_model_state(small_score_model_ve, state)


def test_failed_load_leaves_the_model_untouched(golden, small_score_model_ve):
  before = {k: v.clone() for k, v in small_score_model_ve.state_dict().items()}
  state = {k: torch.zeros_like(v) for k, v in golden_state(golden, 'score_ncsnpp_small_ve').items()}
  state.pop('module.sigmas')
  with pytest.raises(ValueError):
    ckpt.load_model_state(small_score_model_ve, state)
  assert all(torch.equal(v, before[k]) for k, v in small_score_model_ve.state_dict().items())


def test_score_layout_advice_names_the_fitting_config(golden, full_ncsnpp_cifar10):
  """The small golden checkpoint into the full model: the message says which config would fit it."""
  with pytest.raises(ValueError) as error:
    ckpt.load_model_state(full_ncsnpp_cifar10, golden_state(golden, 'score_ncsnpp_small_ve'))
  message = str(error.value)
  for fragment in ("model.nf=16 (model: 128)", "model.num_res_blocks=1 (model: 8)", 'model.ch_mult',
                   'Shapes are set by model.nf'):
    assert fragment in message


def test_classifier_layout_advice_names_the_fitting_config(golden, small_classifier):
  resnet34 = build_on_meta('configs/classifier/cifar100_classifier_resnet34_cond_configs.py')
  with pytest.raises(ValueError) as error:
    ckpt.load_model_state(small_classifier, ckpt.prefixed_state_dict(resnet34), what='classifier')
  message = str(error.value)
  for fragment in ("classifier.model='resnet34_cond' (model: 'resnet18_cond')", 'classifier.classes=100 (model: 10)',
                   'classifier.resnet_base_width=64 (model: 8)', 'classifier.nf=32 (model: 8)',
                   'unexpected keys: classifier.classifier.layer1.2.conv1.weight'):
    assert fragment in message


def test_describe_ncsnpp_reads_the_full_layout(golden_dir):
  shapes = manifest(golden_dir, 'score_cifar10')['state_dict']
  state = {k[len('module.'):]: torch.empty(v['shape'], device='meta') for k, v in shapes.items()}
  fields = NCSNpp.describe_state_dict(state)
  assert fields['model.nf'] == 128 and fields['model.num_res_blocks'] == 8
  assert fields['model.ch_mult'] == (1, 2, 2, 2) and fields['attention blocks'] == 10
  assert fields['model.embedding_type'] == 'fourier'


def test_an_edm_preconditioned_checkpoint_does_not_load_into_a_plain_model(golden, small_score_model_ve):
  config = config_from_flat(golden('score_ncsnpp_small_ve')['config'])
  config.model.preconditioning, config.model.sigma_data = 'edm', 0.5
  with pytest.raises(ValueError) as error:
    ckpt.load_model_state(small_score_model_ve, ckpt.prefixed_state_dict(NCSNpp(config)))
  assert "model.preconditioning='edm' (model: 'none')" in str(error.value)
  assert 'unexpected keys: sigma_data' in str(error.value)


# ------------------------------------------------------------------------------------------ round trips


@pytest.fixture(scope='module')
def trained_small(golden, tmp_path_factory):
  """The small VE score model after two real Adam + EMA updates, and its checkpoint (written once)."""
  config = config_from_flat(golden('score_ncsnpp_small_ve')['config'])
  config.device = 'cpu'
  torch.manual_seed(1)
  model = create_model(config)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
  for _ in range(2):
    model(torch.rand(2, 3, 32, 32), torch.tensor([0.5, 2.0])).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    ema.update(model.parameters())
  path = tmp_path_factory.mktemp('trained') / 'checkpoint_2.pth'
  ckpt.save_checkpoint(path, torch.nn.DataParallel(model), optimizer, step=2, ema=ema)
  return config, model, optimizer, ema, path


def fresh_training_state(config):
  torch.manual_seed(2)
  model = create_model(config)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  return model, optimizer, ExponentialMovingAverage(model.parameters(), decay=0.5)


def assert_nested_equal(a, b, where='state'):
  if isinstance(a, torch.Tensor):
    assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
  elif isinstance(a, dict):
    assert list(a) == list(b), where
    for key in a:
      assert_nested_equal(a[key], b[key], f'{where}[{key!r}]')
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_nested_equal(x, y, f'{where}[{i}]')
  else:
    assert a == b, where


def test_training_state_round_trip_is_exact(trained_small):
  config, model, optimizer, ema, path = trained_small
  restored_model, restored_optimizer, restored_ema = fresh_training_state(config)
  step = ckpt.restore_training_state(path, restored_model, restored_optimizer, restored_ema)
  assert step == 2
  assert_nested_equal(model.state_dict(), restored_model.state_dict(), 'model')
  assert_nested_equal(optimizer.state_dict(), restored_optimizer.state_dict(), 'optimizer')
  assert_nested_equal(ema.state_dict(), restored_ema.state_dict(), 'ema')


def test_restore_score_model_uses_ema_weights(trained_small):
  config, model, _, ema, path = trained_small
  for use_ema_object in (True, False):
    restored, _, restored_ema = fresh_training_state(config)
    ckpt.restore_score_model(path, restored, restored_ema if use_ema_object else None, device='cpu')
    trainable = [p for p in restored.parameters() if p.requires_grad]
    assert all(torch.equal(p, s) for p, s in zip(trainable, ema.shadow_params))
    assert not torch.equal(trainable[0], [p for p in model.parameters() if p.requires_grad][0])
    assert torch.equal(restored.all_modules[0].W, model.all_modules[0].W)  # from 'model', not the EMA
    assert torch.equal(restored.sigmas, model.sigmas)


def test_ema_count_is_validated(tmp_path, trained_small):
  """B24: a shadow list of the wrong length is an error, not a silent truncation."""
  config, _, _, _, path = trained_small
  saved = ckpt.load_checkpoint_file(path)
  saved['ema']['shadow_params'] = saved['ema']['shadow_params'][:-1]
  short = tmp_path / 'short_ema.pth'
  torch.save(saved, short)
  restored, _, restored_ema = fresh_training_state(config)
  for ema in (None, restored_ema):
    with pytest.raises(ValueError, match=r'holds \d+ EMA shadow tensors but the model has \d+ trainable'):
      ckpt.restore_score_model(short, restored, ema)


def test_classifier_round_trip(tmp_path, golden, small_classifier):
  small_classifier.train()(torch.rand(4, 3, 32, 32), torch.rand(4) + 0.1)  # move the BN statistics
  path = tmp_path / 'classifier.pth'
  optimizer = torch.optim.Adam(small_classifier.parameters())
  ckpt.save_checkpoint(path, small_classifier, optimizer, step=0)
  saved = ckpt.load_checkpoint_file(path)
  assert list(saved) == ['optimizer', 'model', 'step'] and saved['step'] == 0
  config = config_from_flat(golden('classifier_resnet18_cond_small')['config'])
  fresh = create_classifier(config)
  ckpt.restore_classifier(path, fresh)
  assert_nested_equal(small_classifier.state_dict(), fresh.state_dict(), 'classifier')


def test_weights_only_layout_for_cas_and_toy(tmp_path, small_classifier):
  path = tmp_path / 'checkpoints_cas' / 'checkpoint_200.pth'
  ckpt.save_weights(path, small_classifier)
  saved = ckpt.load_checkpoint_file(path)
  assert list(saved) == ['model'] and not any(k.startswith('module.') for k in saved['model'])
  ckpt.restore_weights(path, small_classifier, what='CAS classifier')


def test_missing_entries_and_files_are_named(tmp_path, small_classifier):
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    ckpt.load_checkpoint_file(tmp_path / 'nope.pth')
  path = tmp_path / 'classifier.pth'
  ckpt.save_checkpoint(path, small_classifier, step=0)
  with pytest.raises(ValueError, match=r"not a score model checkpoint: it lacks \['ema'\]"):
    ckpt.restore_score_model(path, small_classifier)


# ------------------------------------------------------------------------------------------ NumPy scalars (B39)


def test_numpy_float64_lr_loads_weights_only(tmp_path, small_classifier):
  """Like the released files: the warm-up stores lr = lr·np.minimum(step/warmup, 1) as numpy.float64."""
  optimizer = torch.optim.Adam(small_classifier.parameters(), lr=2e-4)
  give_every_trainable_parameter_a_step(small_classifier, optimizer)
  for group in optimizer.param_groups:
    group['lr'] = 2e-4 * np.minimum(1234 / 5000, 1.0)
  assert type(optimizer.param_groups[0]['lr']) is np.float64
  path = tmp_path / 'checkpoint_1234.pth'
  ckpt.save_checkpoint(path, small_classifier, optimizer, step=1234)
  with pytest.raises(pickle.UnpicklingError):
    torch.load(path, weights_only=True)  # what a plain weights-only load does (B39)
  saved = ckpt.load_checkpoint_file(path)
  lr = saved['optimizer']['param_groups'][0]['lr']
  assert type(lr) is np.float64 and lr == 2e-4 * 1234 / 5000
  fresh_optimizer = torch.optim.Adam(small_classifier.parameters(), lr=1.0)
  assert ckpt.restore_training_state(path, small_classifier, fresh_optimizer) == 1234
  assert type(fresh_optimizer.param_groups[0]['lr']) is float
  assert fresh_optimizer.param_groups[0]['lr'] == pytest.approx(2e-4 * 1234 / 5000, rel=1e-15)


def rename_pickled_global(path, old, new):
  """Rewrite a torch.save zip so its pickle names `new` where it named `old` (as another NumPy would write)."""
  with zipfile.ZipFile(path) as source:
    entries = [(info, source.read(info)) for info in source.infolist()]
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as target:
    for info, data in entries:
      if info.filename.endswith('data.pkl'):
        assert old in data
        data = data.replace(old, new)
      target.writestr(info, data)


@pytest.mark.parametrize('module', [b'numpy._core.multiarray', b'numpy.core.multiarray'])
def test_numpy_scalars_from_either_numpy_major_version(tmp_path, module):
  """Released files come from NumPy 1 (numpy.core...); files saved under NumPy 2 name numpy._core... ."""
  path = tmp_path / 'checkpoint.pth'
  torch.save({'model': {}, 'lr': np.float64(0.5) * np.minimum(0.25, 1.0)}, path)
  written = np.float64(0).__reduce__()[0].__module__.encode()  # the name this NumPy pickles the constructor under
  rename_pickled_global(path, written, module)
  assert ckpt.load_checkpoint_file(path)['lr'] == 0.125


class NotATensor:
  pass


def test_arbitrary_objects_are_still_refused(tmp_path):
  path = tmp_path / 'evil.pth'
  torch.save({'model': {}, 'payload': NotATensor()}, path)
  with pytest.raises(pickle.UnpicklingError):
    ckpt.load_checkpoint_file(path)


def test_tensors_are_mapped_to_the_requested_device(tmp_path, small_classifier):
  """B22: map_location is always passed (meta stands in for a GPU here)."""
  path = tmp_path / 'classifier.pth'
  ckpt.save_checkpoint(path, small_classifier, step=0)
  saved = ckpt.load_checkpoint_file(path, device='meta')
  assert {t.device.type for t in saved['model'].values()} == {'meta'}


# ------------------------------------------------------------------------------------------ files


def test_atomic_write_never_leaves_a_partial_file(tmp_path, small_classifier):
  path = tmp_path / 'checkpoints' / 'checkpoint_5.pth'
  ckpt.save_checkpoint(path, small_classifier, step=5)
  good = path.read_bytes()
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as torch.save would create it, not 0600

  def crash_midway(obj, file):
    file.write(b'PK\x03\x04 half a checkpoint')
    raise OSError('disk full')

  with mock.patch.object(ckpt.torch, 'save', crash_midway), pytest.raises(OSError, match='disk full'):
    ckpt.save_checkpoint(path, small_classifier, step=6)
  assert path.read_bytes() == good
  assert os.listdir(path.parent) == ['checkpoint_5.pth']
  with mock.patch.object(ckpt.torch, 'save', crash_midway), pytest.raises(OSError):
    ckpt.save_checkpoint(path.parent / 'checkpoint_10.pth', small_classifier, step=10)
  assert os.listdir(path.parent) == ['checkpoint_5.pth']


def test_latest_checkpoint_ignores_temporary_and_partial_files(tmp_path, small_classifier):
  assert ckpt.latest_checkpoint(tmp_path / 'missing') is None
  assert ckpt.latest_checkpoint(tmp_path) is None
  for step in (9, 10, 2):
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, step), small_classifier, step=step)
  complete = (tmp_path / 'checkpoint_10.pth').read_bytes()
  (tmp_path / 'checkpoint_30.pth').write_bytes(complete[:len(complete) // 2])  # killed mid-write
  (tmp_path / '.checkpoint_40.pth.x1y2.tmp').write_bytes(complete)
  (tmp_path / 'checkpoint_50.pth.tmp').write_bytes(complete)
  (tmp_path / 'checkpoint_final.pth').write_bytes(complete)
  (tmp_path / 'checkpoint_60.pth').mkdir()
  assert ckpt.latest_checkpoint(tmp_path) == str(tmp_path / 'checkpoint_10.pth')
  assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [2, 9, 10]


def test_prune_keeps_the_newest(tmp_path, small_classifier):
  for step in (1, 2, 3, 4):
    ckpt.save_weights(ckpt.checkpoint_path(tmp_path, step), small_classifier)
  ckpt.prune_checkpoints(tmp_path, keep=0)
  assert len(os.listdir(tmp_path)) == 4
  ckpt.prune_checkpoints(tmp_path, keep=2)
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_3.pth', 'checkpoint_4.pth']


# ------------------------------------------------------------------------------------------ golden copy


def test_golden_copy_matches_shared():
  """tests/golden is a verbatim copy of ../shared/golden (when that exists), so a clean clone tests the same."""
  shared = REPO_ROOT.parent / 'shared' / 'golden'
  if not shared.is_dir():
    pytest.skip('no ../shared/golden next to this checkout')
  local = REPO_ROOT / 'tests' / 'golden'
  for sub in ('manifests', 'vectors'):
    names = sorted(os.listdir(shared / sub))
    assert sorted(os.listdir(local / sub)) == names
    match, mismatch, errors = filecmp.cmpfiles(shared / sub, local / sub, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
  assert resolve_golden_dir().is_dir()


def test_restore_error_names_file_and_config(trained_small, small_score_model_vp):
  """The VE checkpoint into the VP (positional-embedding) model: the file, the config and the fitting value."""
  path = trained_small[-1]
  with pytest.raises(ValueError) as error:
    ckpt.restore_score_model(path, small_score_model_vp, config_hint='configs/vp.py')
  message = str(error.value)
  for fragment in (str(path), 'configs/vp.py', 'unexpected keys: all_modules.0.W', "model.embedding_type='fourier'"):
    assert fragment in message
