"""Checkpoint files: the one place that reads and writes them, in the layout of the original DLSM code.

Layout written (the original's, so files move both ways):
  score model  {'optimizer', 'model', 'step', 'ema'}   model keys prefixed 'module.', EMA as a shadow list
  classifier   {'optimizer', 'model', 'step'}
  CAS / toy    {'model'}                               no prefix (save_weights)
Reading is weights-only with NumPy scalars allow-listed (B39), always mapped to a chosen device (B22),
prefix-tolerant but strict about keys and shapes (B23), and validates the EMA length (B24). Every file is checked
against the CRC-32 checksums its zip archive carries before it is read: a corrupt, empty or truncated file is a
one-line CorruptCheckpointError, and resuming falls back to the newest intact checkpoint.
"""
import hashlib
import importlib
import logging
import os
import pickle
import re
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import torch

import fileio

PREFIX = 'module.'
CHECKPOINT_PATTERN = re.compile(r'^checkpoint_(\d+)\.pth$')
_MAX_LISTED_KEYS = 8

# ---------------------------------------------------------------------------------------------- writing


def unwrap(model):
  """The bare network inside DataParallel / DistributedDataParallel (or the model itself)."""
  wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
  while isinstance(model, wrappers):
    model = model.module
  return model


class _DataParallelKeys(torch.nn.Module):
  """Holds a network as `.module`, so its state_dict has DataParallel's keys and metadata."""

  def __init__(self, module):
    super().__init__()
    self.module = module


def prefixed_state_dict(model):
  """The model's state_dict as the original DataParallel-wrapped model saves it ('module.' keys)."""
  return _DataParallelKeys(unwrap(model)).state_dict()


def atomic_save(obj, path):
  """torch.save through fileio.atomic_write: `path` is never left half-written.

  torch.save writes a zip archive holding a CRC-32 of every record (the pickle and each tensor's bytes): that is the
  checksum verify_checkpoint checks. The layout is unchanged, so the original code reads these files as before.
  """
  fileio.atomic_write(path, lambda file: torch.save(obj, file))


def save_checkpoint(path, model, optimizer=None, step=0, ema=None):
  """Write {'optimizer', 'model', 'step'[, 'ema']} atomically, model keys prefixed 'module.'."""
  state = {}
  if optimizer is not None:
    state['optimizer'] = optimizer.state_dict()
  state['model'] = prefixed_state_dict(model)
  state['step'] = int(step)
  if ema is not None:
    state['ema'] = ema.state_dict()
  atomic_save(state, path)


def save_weights(path, model, prefixed=False):
  """Write {'model': state_dict} atomically (the CAS and toy layout: no 'module.' prefix unless asked)."""
  state_dict = prefixed_state_dict(model) if prefixed else unwrap(model).state_dict()
  atomic_save({'model': state_dict}, path)


def checkpoint_path(ckpt_dir, step):
  """Training checkpoints are named by the number of completed updates (B26)."""
  return os.path.join(ckpt_dir, f'checkpoint_{int(step)}.pth')


def list_checkpoints(ckpt_dir):
  """[(step, path)] of complete checkpoint_<step>.pth files, ascending; temporary and truncated files skipped."""
  if not os.path.isdir(ckpt_dir):
    return []
  found = []
  for name in os.listdir(ckpt_dir):
    match = CHECKPOINT_PATTERN.match(name)
    path = os.path.join(ckpt_dir, name)
    if match is None or not os.path.isfile(path):
      continue
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a truncated one has no directory
      logging.warning('Ignoring incomplete checkpoint file %s', path)
      continue
    found.append((int(match.group(1)), path))
  return sorted(found)


def latest_checkpoint(ckpt_dir):
  """Path of the newest checkpoint in ckpt_dir whose checksums hold, or None; corrupt ones are skipped, warned."""
  for _, path in reversed(list_checkpoints(ckpt_dir)):
    try:
      verify_checkpoint(path)
      return path
    except CorruptCheckpointError as error:
      logging.warning('%s; falling back to the previous checkpoint', error)
  return None


def prune_checkpoints(ckpt_dir, keep):
  """Delete all but the `keep` newest checkpoints (keep <= 0 keeps all)."""
  if keep <= 0:
    return
  for _, path in list_checkpoints(ckpt_dir)[:-keep]:
    os.remove(path)


# ---------------------------------------------------------------------------------------------- reading


_NUMPY_DTYPE_CLASSES = ('Float16DType', 'Float32DType', 'Float64DType', 'LongDoubleDType', 'Int8DType',
                        'Int16DType', 'Int32DType', 'Int64DType', 'LongDType', 'LongLongDType', 'UInt8DType',
                        'UInt16DType', 'UInt32DType', 'UInt64DType', 'ULongDType', 'ULongLongDType', 'BoolDType')


def _numpy_scalar_globals():
  """What unpickling a NumPy scalar needs (the released files store the warm-up lr as numpy.float64, B39).

  NumPy 1.x pickles the scalar constructor as numpy.core.multiarray.scalar, NumPy 2 as numpy._core...: both
  names are accepted, whichever NumPy is installed.
  """
  scalar = importlib.import_module('numpy._core.multiarray').scalar
  allowed = [np.dtype] + [getattr(np.dtypes, name) for name in _NUMPY_DTYPE_CLASSES if hasattr(np.dtypes, name)]
  return allowed + [(scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar')]


class CorruptCheckpointError(ValueError):
  """A checkpoint file that is empty, truncated or fails its checksums."""


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
  """A checkpoint holding objects other than tensors and plain data: refused, never unpickled."""


def verify_checkpoint(path):
  """Check that `path` is a complete torch zip archive whose records match their CRC-32s; one-line error if not.

  Files of the legacy (pre-zip) torch format carry no checksum and pass unchecked, as do archives written with
  torch's CRC computation switched off (every CRC field 0).
  """
  size = os.path.getsize(path)
  if size == 0:
    raise CorruptCheckpointError(f'{path} is empty (0 bytes): not a checkpoint')
  if not zipfile.is_zipfile(path):
    with open(path, 'rb') as file:
      if file.read(4) == b'PK\x03\x04':
        raise CorruptCheckpointError(f'{path} is truncated ({size} bytes, no zip directory at its end)')
    return
  try:
    with zipfile.ZipFile(path) as archive:
      if all(info.CRC == 0 for info in archive.infolist()):
        return
      bad = archive.testzip()
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as error:
    raise CorruptCheckpointError(f'{path} is corrupt ({error})') from error
  if bad is not None:
    raise CorruptCheckpointError(f'{path} is corrupt: record {bad!r} does not match its CRC-32 checksum')


def checkpoint_fingerprint(path):
  """A short identity of a checkpoint's content: sha256 of its zip records' names, sizes and CRC-32s (no full read).

  Legacy (pre-zip) files, which carry no checksums, are identified by their size and modification time.
  """
  digest = hashlib.sha256()
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      for info in archive.infolist():
        digest.update(f'{info.filename}:{info.file_size}:{info.CRC};'.split('/', 1)[-1].encode())
  else:
    stat = os.stat(path)
    digest.update(f'{stat.st_size}:{stat.st_mtime_ns}'.encode())
  return digest.hexdigest()[:16]


def load_checkpoint_file(path, device='cpu'):
  """torch.load(weights_only=True) of a verified file, NumPy scalars allow-listed, every tensor mapped to `device`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Checkpoint file not found: {path}')
  verify_checkpoint(path)
  try:
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
      return torch.load(path, map_location=device, weights_only=True)
  except pickle.UnpicklingError as error:
    raise UnsafeCheckpointError(f'{path} holds objects other than tensors and plain data; refused (torch.load '
                                'weights_only)') from error
  except Exception as error:  # torch.load of a damaged or foreign file raises anything from KeyError to RuntimeError
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise CorruptCheckpointError(f'{path} cannot be read as a checkpoint ({first_line})') from error


def _require(checkpoint, keys, path, what):
  missing = [key for key in keys if key not in checkpoint]
  if missing:
    raise ValueError(f'{path} is not a {what} checkpoint: it lacks {missing} '
                     f'(has {sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__})')


def strip_prefix(state_dict):
  """Remove one leading 'module.' when every key carries it (keeping the per-module version metadata)."""
  if not state_dict or not all(key.startswith(PREFIX) for key in state_dict):
    return state_dict
  stripped = OrderedDict((key[len(PREFIX):], value) for key, value in state_dict.items())
  metadata = getattr(state_dict, '_metadata', None)
  if metadata is not None:
    stripped._metadata = OrderedDict(('' if key == 'module' else key[len(PREFIX):], value)
                                     for key, value in metadata.items() if key.startswith('module'))
  return stripped


def _listed(keys):
  keys = list(keys)
  shown = ', '.join(keys[:_MAX_LISTED_KEYS])
  return shown + (f', ... ({len(keys) - _MAX_LISTED_KEYS} more)' if len(keys) > _MAX_LISTED_KEYS else '')


def load_model_state(model, state_dict, what='score model', config_hint=None, source=None):
  """Strictly load 'module.'-prefixed or plain keys; any missing / unexpected / mis-shaped key is a ValueError.

  The error names the keys, the config values the checkpoint fits, `source` (its file) and `config_hint` (e.g. the
  config file the model was built from).
  """
  model = unwrap(model)
  state_dict = strip_prefix(state_dict)
  expected = model.state_dict()
  missing = [key for key in expected if key not in state_dict]
  unexpected = [key for key in state_dict if key not in expected]
  misshaped = [f'{key} {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}'
               for key, value in expected.items()
               if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)]
  if missing or unexpected or misshaped:
    problems = []
    if missing:
      problems.append(f'missing keys: {_listed(missing)}')
    if unexpected:
      problems.append(f'unexpected keys: {_listed(unexpected)}')
    if misshaped:
      problems.append(f'mis-shaped keys (checkpoint vs model): {_listed(misshaped)}')
    raise ValueError(f'The {what} checkpoint{f" {source}" if source else ""} does not fit the model built from '
                     f'{config_hint or "the config"}: ' + '; '.join(problems) + '. '
                     + layout_advice(model, state_dict, expected))
  model.load_state_dict(state_dict, strict=True)
  return model


def validate_shadows(model, shadow_params, what='score model'):
  """The EMA shadow list must pair one-to-one with the trainable parameters (B24)."""
  trainable = [(name, p) for name, p in unwrap(model).named_parameters() if p.requires_grad]
  if len(shadow_params) != len(trainable):
    raise ValueError(f'The {what} checkpoint holds {len(shadow_params)} EMA shadow tensors but the model has '
                     f'{len(trainable)} trainable parameters: the checkpoint is of a different architecture.')
  for index, ((name, param), shadow) in enumerate(zip(trainable, shadow_params)):
    if tuple(shadow.shape) != tuple(param.shape):
      raise ValueError(f'EMA shadow {index} has shape {tuple(shadow.shape)} but parameter {name} has '
                       f'{tuple(param.shape)}: the checkpoint is of a different architecture.')


def copy_shadows_into(model, shadow_params):
  """Overwrite the trainable parameters (in parameters() order) with EMA shadows that validate_shadows accepted."""
  trainable = [p for p in unwrap(model).parameters() if p.requires_grad]
  with torch.no_grad():
    for param, shadow in zip(trainable, shadow_params):
      param.copy_(shadow)


def restore_score_model(path, model, ema=None, device='cpu', config_hint=None):
  """Load a score checkpoint for use: 'model' strictly (incl. the frozen Fourier W, B23), then the EMA weights.

  With `ema`, its state is loaded and copied into the model; without, the shadows are copied directly.
  """
  checkpoint = load_checkpoint_file(path, device)
  _require(checkpoint, ('model', 'ema'), path, 'score model')
  load_model_state(model, checkpoint['model'], 'score model', config_hint, path)
  shadows = checkpoint['ema']['shadow_params']
  validate_shadows(model, shadows)
  if ema is None:
    copy_shadows_into(model, shadows)
  else:
    ema.load_state_dict(checkpoint['ema'])
    ema.copy_to(unwrap(model).parameters())
  return model


def load_guidance_models(config, score_path, classifier_path, device='cpu', channels_last=False):
  """(score model with its EMA weights, classifier) of `config`, in eval mode on `device`: the networks of guided
  sampling and of the posterior-score metrics.

  channels_last keeps every weight's value but makes oneDNN / cuDNN run other convolution kernels, so samples equal
  those of the networks as built (NCHW) to float32 rounding only: the guided score differs by about 1e-6 relative
  (measured on CPU), not bit for bit."""
  from models import utils as mutils
  score_model = restore_score_model(score_path, mutils.create_model(config), None, device)
  classifier = restore_classifier(classifier_path, mutils.create_classifier(config), device)
  models = score_model.eval(), classifier.eval()
  return mutils.to_channels_last(*models) if channels_last else models


def restore_classifier(path, model, device='cpu', config_hint=None):
  """Load a classifier checkpoint's 'model' strictly (BatchNorm statistics included)."""
  return restore_weights(path, model, device, 'classifier', config_hint)


def restore_weights(path, model, device='cpu', what='model', config_hint=None):
  """Load the 'model' entry of any checkpoint strictly, with or without the 'module.' prefix."""
  checkpoint = load_checkpoint_file(path, device)
  _require(checkpoint, ('model',), path, what)
  return load_model_state(model, checkpoint['model'], what, config_hint, path)


def _plain_numbers(optimizer_state):
  """NumPy scalars in param_groups (the released files' lr) become Python numbers."""
  for group in optimizer_state.get('param_groups', []):
    for key, value in group.items():
      if isinstance(value, np.generic):
        group[key] = value.item()
  return optimizer_state


def restore_training_state(path, model, optimizer, ema=None, device='cpu', config_hint=None):
  """Resume: model, optimizer, EMA (if given) and the step, exactly as saved. Returns the step."""
  checkpoint = load_checkpoint_file(path, device)
  required = ('optimizer', 'model', 'step') + (('ema',) if ema is not None else ())
  _require(checkpoint, required, path, 'training')
  load_model_state(model, checkpoint['model'], 'training', config_hint, path)
  optimizer.load_state_dict(_plain_numbers(checkpoint['optimizer']))
  if ema is not None:
    validate_shadows(model, checkpoint['ema']['shadow_params'])
    ema.load_state_dict(checkpoint['ema'])
  return int(checkpoint['step'])


# ---------------------------------------------------------------------------------------------- advice


def layout_advice(model, checkpoint_state, model_state):
  """Name the config values the checkpoint implies next to those of the built model (the network describes both)."""
  describe = getattr(type(model), 'describe_state_dict', None)
  if describe is None:
    return ''
  found, built = describe(checkpoint_state), describe(model_state)
  differing = [f'{key}={found[key]!r} (model: {built.get(key, "n/a")!r})'
               for key in found if found.get(key) != built.get(key)]
  advice = f'Shapes are set by {type(model).SHAPE_FIELDS}.'
  if differing:
    advice += ' The checkpoint fits a config with ' + ', '.join(differing) + '.'
  return advice
