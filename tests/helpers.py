"""Shared test helpers: configs from files or golden flat dicts, golden-tolerance checks, recipe weights."""
import ast
import hashlib
import importlib.util
import signal
from pathlib import Path

import ml_collections
import numpy as np
import torch

import sde_lib

REPO_ROOT = Path(__file__).resolve().parents[1]

# Flat-config fields the golden files write as strings of lists but the configs hold as tuples.
_TUPLE_FIELDS = {'model.ch_mult', 'model.attn_resolutions'}


def default_sigint():
  """preexec_fn of a child that must see Ctrl-C: a shell's background job (a CI runner, `make test &`) ignores SIGINT,
  and Python keeps an ignored SIGINT instead of raising KeyboardInterrupt, so the default is restored first."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def load_config(relative_path):
  """get_config() of a config file given relative to the repository root."""
  path = REPO_ROOT / relative_path
  spec = importlib.util.spec_from_file_location(f'config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def sde_from_golden(fields):
  """The SDE a golden record describes as {'type': class name, **constructor arguments}."""
  return getattr(sde_lib, fields['type'])(**{k: v for k, v in fields.items() if k != 'type'})


def _parse_flat_value(key, value):
  if isinstance(value, str) and value[:1] in '[(':
    value = ast.literal_eval(value)
    return tuple(value) if key in _TUPLE_FIELDS else list(value)
  return value


def config_from_flat(flat):
  """ConfigDict from a golden file's flat {'section.field': value} config (list strings parsed)."""
  config = ml_collections.ConfigDict()
  for key, value in flat.items():
    *sections, field = key.split('.')
    node = config
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[field] = _parse_flat_value(key, value)
  return config


def flatten_config(config, prefix=''):
  """{'section.field': value} of a ConfigDict (nested sections joined with dots)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten_config(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def golden_form(value):
  """A config value as the golden files write it (lists and tuples as the string of a list)."""
  if isinstance(value, (list, tuple)):
    return str(list(value))
  return value


def assert_close_to_golden(actual, expected, rtol=1e-4, name='tensor'):
  """|actual − expected| ≤ rtol · max|expected| elementwise (the contract's golden tolerance)."""
  actual = torch.as_tensor(actual).detach().cpu().to(torch.float64)
  expected = torch.as_tensor(expected).detach().cpu().to(torch.float64)
  assert actual.shape == expected.shape, f'{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
  scale = expected.abs().max().item()
  error = (actual - expected).abs().max().item()
  assert error <= rtol * scale, f'{name}: max error {error:.3g} > {rtol} x max-abs {scale:.3g}'


def tensor_from_recipe(entry, shape, dtype, config=None):
  """One state_dict tensor regenerated from a golden `param_recipe` entry (golden vectors README)."""
  if entry['dist'] == 'keep':
    if len(shape) == 0:  # BatchNorm num_batches_tracked
      return torch.zeros((), dtype=dtype)
    model = config.model
    sigmas = np.exp(np.linspace(np.log(model.sigma_max), np.log(model.sigma_min), model.num_scales))
    return torch.tensor(sigmas, dtype=dtype)
  generator = torch.Generator().manual_seed(entry['seed'])
  draw = torch.randn if entry['dist'] == 'normal' else torch.rand
  x = draw(tuple(shape), generator=generator, dtype=torch.float32)
  return (entry['loc'] + entry['scale'] * x).to(dtype)


def state_dict_from_recipe(param_recipe, reference_state_dict, config=None, keep=None):
  """Recipe weights for every key of `reference_state_dict` (which supplies shapes and dtypes).

  `keep` optionally supplies 'keep' entries verbatim: the golden `sigmas` differ from this machine's NumPy exp by
  1 ulp in some entries, so a bit-exact sha256 needs the stored table (e.g. a small golden file's `module.sigmas`).
  """
  keep = keep or {}
  return {key: keep[key] if key in keep
          else tensor_from_recipe(param_recipe[key], tuple(ref.shape), ref.dtype, config)
          for key, ref in reference_state_dict.items()}


def state_dict_sha256(state_dict):
  """The golden files' state_dict_sha256: keys sorted, key bytes then raw little-endian tensor bytes."""
  digest = hashlib.sha256()
  for key in sorted(state_dict):
    digest.update(key.encode('utf-8'))
    digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
  return digest.hexdigest()
