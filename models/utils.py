"""Model registry, construction, the wrappers that turn networks into score / logit functions of (x, t), and the
likelihood gradient ∇x log(softmax(f) + 1e-8)[y] shared by the DLSM loss and classifier guidance.

What a network receives as time and how its output becomes a score are asked of the SDE (sde_lib).
"""
import importlib

import torch
import torch.nn.functional as F

import registry

_MODELS = {}

# Modules whose import registers networks; imported on demand so the registry works whatever was imported first.
_NETWORK_MODULES = ('models.ncsnpp', 'models.resnet_cond', 'models.toy')


# Class decorator: makes the network available as config.model.name / config.classifier.name = name.
register_model = registry.decorator_for(_MODELS)


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


def to_channels_last(*models):
  """Converts the networks' 4-D weights to channels_last in place (same values): oneDNN and cuDNN convolutions
  run faster on it (benchmarks/bench_sampling.py). Meant for networks that are only sampled from."""
  for model in models:
    model.to(memory_format=torch.channels_last)
  return models


def get_model_fn(model, train=False):
  """fn(x, c) = model(x, c), switching the model to train() or eval() on every call as the original does."""

  def model_fn(x, labels):
    model.train(train)
    return model(x, labels)

  return model_fn


def get_score_fn(sde, model, train=False, continuous=False):
  """score_fn(x, t) = sde.score_from_output(model(x, sde.network_time(t)), t): VE the output, VP / sub-VP −out/std."""
  model_fn = get_model_fn(model, train=train)

  def score_fn(x, t):
    return sde.score_from_output(model_fn(x, sde.network_time(t, continuous)), t, continuous)

  return score_fn


def get_classifier_fn(sde, model, train=False, continuous=False):
  """logits_fn(x, t) = classifier(x, sde.classifier_time(t)): σ(t) for VE, 999·t for VP / sub-VP."""
  model_fn = get_model_fn(model, train=train)

  def logits_fn(x, t):
    return model_fn(x, sde.classifier_time(t, continuous))

  return logits_fn


LOG_PROB_EPS = 1e-8  # added to the softmax probabilities before the log, as the original (training and guidance)


def log_prob_input_grad(logits, x, labels, create_graph=False, eps=LOG_PROB_EPS):
  """∇x Σ_i log(softmax(logits_i) + eps)[y_i] (eps = 0: log_softmax), ONE vector-Jacobian product over the batch.

  `logits` must have been computed from `x` with autograd on. With BatchNorm in train mode the one product keeps the
  cross-sample terms of the original (B35); `create_graph=True` lets the DLSM loss back-propagate through it.
  """
  logits = logits.float()
  if eps:
    log_probs = torch.log(torch.softmax(logits, dim=1) + eps)
  else:
    log_probs = torch.log_softmax(logits, dim=1)
  cotangent = F.one_hot(labels, num_classes=logits.shape[1]).to(log_probs.dtype)
  grad, = torch.autograd.grad(log_probs, x, grad_outputs=cotangent, create_graph=create_graph)
  return grad
