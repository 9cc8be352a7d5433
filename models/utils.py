"""Model registry, construction, and the wrappers that turn networks into score / logit functions of (x, t).

Time handling per SDE (what a network receives as its second input) lives here and nowhere else
(spec §1.5, §2.9.1): σ(t) for VE, 999·t for VP / sub-VP.
"""
import importlib

import torch

import sde_lib

_MODELS = {}

# Modules whose import registers networks; imported on demand so the registry works whatever was imported first.
_NETWORK_MODULES = ('models.ncsnpp', 'models.resnet_cond', 'models.toy')


def register_model(cls=None, *, name=None):
  """Class decorator: register a network under `name` (default: the class name)."""

  def _register(cls):
    local_name = cls.__name__ if name is None else name
    if local_name in _MODELS and _MODELS[local_name] is not cls:
      raise ValueError(f'Already registered model with name: {local_name}')
    _MODELS[local_name] = cls
    return cls

  return _register if cls is None else _register(cls)


def _import_network_modules():
  for module_name in _NETWORK_MODULES:
    try:
      importlib.import_module(module_name)
    except ModuleNotFoundError as error:
      if error.name != module_name:  # a genuine missing dependency inside the module
        raise


def get_model(name):
  """The network class registered under `name`."""
  if name not in _MODELS:
    _import_network_modules()
  if name not in _MODELS:
    raise KeyError(f'No model registered as {name!r}; known: {sorted(_MODELS)}')
  return _MODELS[name]


def get_device(config):
  """config.device ('auto', 'cpu', 'cuda', 'cuda:1', ...) as a torch.device; 'auto' prefers CUDA."""
  device = config.get('device', 'auto')
  if device in (None, '', 'auto'):
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  return torch.device(device)


def use_exact_float32(enabled=True):
  """Turn TF32 off (enabled=True) for CUDA convolutions and matmuls, so fp32 runs match the golden numbers.

  PyTorch allows TF32 in cuDNN convolutions by default; on an H200 that moves the small NCSN++ scores by ~1e-3
  and classifier input-gradients by up to ~1e-1 relative (measured); with TF32 off they agree to ~1e-6 (VE).
  """
  torch.backends.cudnn.allow_tf32 = not enabled
  torch.backends.cuda.matmul.allow_tf32 = not enabled


def create_model(config):
  """The score network named by config.model.name, on get_device(config) (not wrapped in DataParallel)."""
  return get_model(config.model.name)(config).to(get_device(config))


def create_classifier(config):
  """The noise-conditioned classifier named by config.classifier.name, on get_device(config)."""
  return get_model(config.classifier.name)(config).to(get_device(config))


def get_model_fn(model, train=False):
  """fn(x, c) = model(x, c), switching the model to train() or eval() on every call as the original does."""

  def model_fn(x, labels):
    model.train(train)
    return model(x, labels)

  return model_fn


def noise_condition(sde, t, continuous=True):
  """What the score network receives for time t (spec §2.9.1 table).

  VE: σ(t), or round((T − t)(N − 1)) as int64 when discrete (round half to even);
  VP: 999·t, or the float t·(N − 1) when discrete; sub-VP: always 999·t.
  """
  if isinstance(sde, sde_lib.VESDE):
    if continuous:
      return sde.marginal_std(t)
    return torch.round((sde.T - t) * (sde.N - 1)).long()
  if isinstance(sde, sde_lib.VPSDE) and not continuous:
    return t * (sde.N - 1)
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    return t * 999  # the literal 999 of the original, not N − 1
  raise NotImplementedError(f'SDE class {type(sde).__name__} not yet supported.')


def classifier_condition(sde, t, continuous=True):
  """What the classifier receives for time t: σ(t) for VE (whatever `continuous`), 999·t for VP / sub-VP."""
  if isinstance(sde, sde_lib.VESDE):
    return sde.marginal_std(t)
  if isinstance(sde, sde_lib.VPSDE) and not continuous:
    raise NotImplementedError('A classifier on the discrete VP SDE is not supported (as in the original).')
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    return t * 999
  raise NotImplementedError(f'SDE class {type(sde).__name__} not yet supported.')


def _score_std(sde, t, continuous):
  """The std that turns a VP / sub-VP network output (predicted noise) into a score."""
  if isinstance(sde, sde_lib.VPSDE) and not continuous:
    k = sde.timestep_index(t)
    return sde.sqrt_1m_alphas_cumprod.to(t.device)[k]
  return sde.marginal_std(t)


def get_score_fn(sde, model, train=False, continuous=False):
  """score_fn(x, t): VE returns the network output itself; VP / sub-VP return −output / std(t)."""
  model_fn = get_model_fn(model, train=train)
  if isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t):
      return model_fn(x, noise_condition(sde, t, continuous))

  elif isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):

    def score_fn(x, t):
      output = model_fn(x, noise_condition(sde, t, continuous))
      return -output / sde_lib.batch_broadcast(_score_std(sde, t, continuous), output)

  else:
    raise NotImplementedError(f'SDE class {type(sde).__name__} not yet supported.')
  return score_fn


def get_classifier_fn(sde, model, train=False, continuous=False):
  """logits_fn(x, t) = classifier(x, classifier_condition(sde, t))."""
  model_fn = get_model_fn(model, train=train)

  def logits_fn(x, t):
    return model_fn(x, classifier_condition(sde, t, continuous))

  return logits_fn
