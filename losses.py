"""Training losses and one-step functions: score matching, the classifier objective (CE / DLSM / total), the optimiser.

One implementation serves the CIFAR models and the toy: the score loss (denoising score matching with a σ-power
weighting), the classifier objective (CE / DLSM / total) and the optimiser step with warm-up and clipping.
Random draws follow the original's calls and order (`torch.rand(B)` for t, then `torch.randn_like(batch)` for z), so
`torch.manual_seed(s)` reproduces the original's loss; explicit `t` and `z` may be passed instead.
"""
import torch
import torch.nn.functional as F

from models import utils as mutils
from models.utils import LOG_PROB_EPS, log_prob_input_grad  # noqa: F401 (the likelihood gradient, shared with guidance)
from sde_lib import batch_broadcast

import fileio
import registry
LOSS_TYPES = ('ce', 'dlsm', 'total')


class NonFiniteLossError(FloatingPointError, fileio.ExpectedError):
  """Raised when a training loss or the parameters stop being finite."""


def get_optimizer(config, params):
  """Adam (betas (beta1, 0.999), eps, weight decay) or SGD with momentum, from `config.optim`."""
  name = config.optim.optimizer
  if name == 'Adam':
    return torch.optim.Adam(params, lr=config.optim.lr, betas=(config.optim.beta1, 0.999), eps=config.optim.eps,
                            weight_decay=config.optim.weight_decay)
  if name == 'SGD':
    return torch.optim.SGD(params, lr=config.optim.lr, momentum=config.optim.momentum)
  raise ValueError(f'config.optim.optimizer={name!r} is not supported; use Adam or SGD.')


def optimization_manager(config):
  """Returns optimize_fn(optimizer, params, step, ...): warm-up, global-norm clipping, update.

  `step` is the number of updates already done, so the first update uses lr 0 when warm-up is on; the trainers pass
  their real counter (the original classifier trainer passed 0 forever, B1). lr stays a Python float (B39).
  """
  def optimize_fn(optimizer, params, step, lr=config.optim.lr, warmup=config.optim.warmup,
                  grad_clip=config.optim.grad_clip):
    if warmup > 0:
      for group in optimizer.param_groups:
        group['lr'] = lr * min(step / warmup, 1.0)
    if grad_clip >= 0:
      torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
    optimizer.step()

  return optimize_fn


def draw_time_and_noise(sde, batch, eps, t=None, z=None):
  """t ~ U(eps, T) then z ~ N(0, I), drawn in the original's order unless given."""
  if t is None:
    t = torch.rand(batch.shape[0], device=batch.device) * (sde.T - eps) + eps
  if z is None:
    z = torch.randn_like(batch)
  return t, z


def perturb(sde, batch, t, z):
  """x̃ = mean(x, t) + σ(t) z; returns (x̃, σ(t) of shape (B,))."""
  mean, std = sde.marginal_prob(batch, t)
  return mean + batch_broadcast(std, batch) * z, std


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=1e-5, weighting=1):
  """Continuous denoising score matching with x̃ = mean(x, t) + σ(t) z; `weighting` w gives the element term
  (s σ^w + z σ^(w-1))², or (s + z/σ)²·g(t)² with likelihood_weighting.

  w = 1 is the CIFAR loss (s σ + z)²; the toy uses w = 2 with reduce_mean=True and eps=0, as the original toy does.
  Per sample: mean over elements if reduce_mean else ½·sum; batch loss: mean over samples.
  """
  def reduce_op(x):
    x = x.reshape(x.shape[0], -1)
    return torch.mean(x, dim=-1) if reduce_mean else 0.5 * torch.sum(x, dim=-1)

  def loss_fn(model, batch, t=None, z=None):
    score_fn = mutils.get_score_fn(sde, model, train=train, continuous=continuous)
    t, z = draw_time_and_noise(sde, batch, eps, t, z)
    perturbed, std = perturb(sde, batch, t, z)
    std = batch_broadcast(std, batch)
    score = score_fn(perturbed, t)
    if likelihood_weighting:
      g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
      losses = reduce_op(torch.square(score + z / std)) * g2
    elif weighting == 1:
      losses = reduce_op(torch.square(score * std + z))
    else:
      losses = reduce_op(torch.square(score * std ** weighting + z * std ** (weighting - 1)))
    return torch.mean(losses)

  return loss_fn


def get_smld_loss_fn(vesde, train, reduce_mean=False):
  """Legacy discrete VE loss (noise-level index k ~ U{0..N-1}); only with training.continuous=False."""
  reduce_op = torch.mean if reduce_mean else lambda x, dim: 0.5 * torch.sum(x, dim=dim)
  sigmas_descending = torch.flip(torch.as_tensor(vesde.discrete_sigmas), dims=(0,))

  def loss_fn(model, batch):
    model_fn = mutils.get_model_fn(model, train=train)
    labels = torch.randint(0, vesde.N, (batch.shape[0],), device=batch.device)
    sigmas = batch_broadcast(sigmas_descending.to(batch.device)[labels], batch)
    noise = torch.randn_like(batch) * sigmas
    perturbed = noise + batch
    target = -noise / sigmas ** 2
    losses = torch.square(model_fn(perturbed, labels) - target)
    return torch.mean(reduce_op(losses.reshape(losses.shape[0], -1), dim=-1) * sigmas.flatten() ** 2)

  return loss_fn


def get_ddpm_loss_fn(vpsde, train, reduce_mean=True):
  """Legacy discrete VP (DDPM) loss; only with training.continuous=False."""
  reduce_op = torch.mean if reduce_mean else lambda x, dim: 0.5 * torch.sum(x, dim=dim)

  def loss_fn(model, batch):
    model_fn = mutils.get_model_fn(model, train=train)
    labels = torch.randint(0, vpsde.N, (batch.shape[0],), device=batch.device)
    sqrt_alphas_cumprod = vpsde.table('sqrt_alphas_cumprod', batch.device)
    sqrt_1m_alphas_cumprod = vpsde.table('sqrt_1m_alphas_cumprod', batch.device)
    noise = torch.randn_like(batch)
    perturbed = (batch_broadcast(sqrt_alphas_cumprod[labels], batch) * batch
                 + batch_broadcast(sqrt_1m_alphas_cumprod[labels], batch) * noise)
    losses = torch.square(model_fn(perturbed, labels) - noise)
    return torch.mean(reduce_op(losses.reshape(losses.shape[0], -1), dim=-1))

  return loss_fn


_DISCRETE_LOSSES = {'smld': get_smld_loss_fn, 'ddpm': get_ddpm_loss_fn}  # by SDE.discrete_loss


def dlsm_loss(log_prob_grad, prior_score, z, std, weighting_dlsm=0):
  """mean of ½ (σ^w G + σ^w s + σ^(w-1) z)² over all elements, i.e. ½σ^{2w}(G + s + z/σ)² (G: the likelihood
  gradient, s: the prior score, z: the noise that produced x̃)."""
  std = batch_broadcast(std, z)
  weight = std ** weighting_dlsm
  residual = log_prob_grad * weight + prior_score * weight + z * std ** (weighting_dlsm - 1)
  return torch.mean(0.5 * torch.square(residual))


def classifier_objective(logits_fn, perturbed, labels, prior_score, z, std, loss_type='total', weighting_dlsm=0,
                         weighting_ce=0, coef=1.0, create_graph=True):
  """The ONE classifier objective, for CIFAR and the toy: 'ce', 'dlsm' or 'total' = dlsm + coef·ce (CE weighted by
  σ^(−2·weighting_ce), on the raw logits).

  logits_fn(x) gives the classifier logits at the (fixed) time of `perturbed`; `prior_score` is the frozen score
  model's output, `z` the noise and `std` (B,) the marginal std that produced `perturbed`. `create_graph=False` gives
  a loss that can be evaluated but not back-propagated into the parameters through the DLSM term.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f'loss_type={loss_type!r}; expected one of {LOSS_TYPES}.')
  needs_grad = loss_type != 'ce'
  x = perturbed.detach().clone().requires_grad_(needs_grad)
  logits = logits_fn(x)
  loss = 0.
  if needs_grad:
    grad = log_prob_input_grad(logits, x, labels, create_graph=create_graph)
    loss = dlsm_loss(grad, prior_score, z, std, weighting_dlsm)
  if loss_type != 'dlsm':
    loss_ce = torch.mean(F.cross_entropy(logits, labels, reduction='none') * std ** (-2 * weighting_ce))
    loss = loss_ce if loss_type == 'ce' else loss + coef * loss_ce
  return loss


def get_sde_classifier_loss_fn(sde, train, num_classes, continuous=True, loss_type='total', weighting_dlsm=0,
                               weighting_ce=0, coef=1.0, eps=None):
  """loss_fn(classifier, score_model, batch, labels, t=None, z=None) -> scalar, with t ~ U(eps, T); eps defaults to
  the SDE's sampling eps, as the original classifier trainer (1e-5 VE, 1e-3 VP / sub-VP).

  The frozen score model runs in eval mode without autograd; the classifier runs in train mode when `train`.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f'loss_type={loss_type!r}; expected one of {LOSS_TYPES}.')
  if not continuous:
    raise ValueError('The classifier loss needs training.continuous=True (as the original trainer).')
  eps = sde.sampling_eps if eps is None else eps

  def loss_fn(classifier, score_model, batch, labels, t=None, z=None):
    classifier_fn = mutils.get_classifier_fn(sde, classifier, train=train, continuous=continuous)
    t, z = draw_time_and_noise(sde, batch, eps, t, z)
    perturbed, std = perturb(sde, batch, t, z)
    prior_score = 0.
    if loss_type != 'ce':
      score_fn = mutils.get_score_fn(sde, score_model, train=False, continuous=continuous)
      with torch.no_grad():
        prior_score = score_fn(perturbed, t)
    with torch.enable_grad():  # the DLSM term needs ∇x even when evaluating
      return classifier_objective(lambda x: classifier_fn(x, t), perturbed, labels, prior_score, z, std,
                                  loss_type, weighting_dlsm, weighting_ce, coef, create_graph=train)

  return loss_fn


def get_step_fn(sde, train, optimize_fn=None, reduce_mean=False, continuous=True, likelihood_weighting=False,
                eps=1e-3, weighting=1):
  """Score-model step: step_fn(state, batch) -> loss. state = {'model','optimizer','ema','step'}.

  Train: one update, step += 1, EMA update. Eval: the loss with the EMA weights, no gradients.
  """
  if continuous:
    loss_fn = get_sde_loss_fn(sde, train, reduce_mean=reduce_mean, continuous=True,
                              likelihood_weighting=likelihood_weighting, eps=eps, weighting=weighting)
  elif likelihood_weighting:
    raise ValueError('likelihood_weighting requires training.continuous=True.')
  elif sde.discrete_loss is None:
    raise ValueError(f'Discrete training is not available for {type(sde).__name__}.')
  else:
    loss_fn = _DISCRETE_LOSSES[sde.discrete_loss](sde, train, reduce_mean=reduce_mean)

  def step_fn(state, batch):
    model = state['model']
    if train:
      optimizer = state['optimizer']
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model, batch)
      loss.backward()
      optimize_fn(optimizer, model.parameters(), step=state['step'])
      state['step'] += 1
      state['ema'].update(model.parameters())
      return loss.detach()
    with torch.no_grad():
      ema = state['ema']
      ema.store(model.parameters())
      ema.copy_to(model.parameters())
      loss = loss_fn(model, batch)
      ema.restore(model.parameters())
    return loss

  return step_fn


def get_classifier_step_fn(sde, train, optimize_fn=None, num_classes=10, continuous=True, loss_type='total',
                           weighting_dlsm=0, weighting_ce=0, coef=1.0, eps=None):
  """Classifier step: step_fn(state, batch, labels) -> loss. state = {'model','score_model','optimizer','step'}.

  Train: one update and step += 1 (the original never counted, B1). Eval: the loss, classifier in eval mode.
  """
  loss_fn = get_sde_classifier_loss_fn(sde, train, num_classes, continuous=continuous, loss_type=loss_type,
                                       weighting_dlsm=weighting_dlsm, weighting_ce=weighting_ce, coef=coef, eps=eps)

  def step_fn(state, batch, labels):
    classifier = state['model']
    if not train:
      return loss_fn(classifier, state['score_model'], batch, labels).detach()
    optimizer = state['optimizer']
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(classifier, state['score_model'], batch, labels)
    loss.backward()
    optimize_fn(optimizer, classifier.parameters(), step=state['step'])
    state['step'] += 1
    return loss.detach()

  return step_fn


def get_classifier_accuracy_fn(sde, eps, continuous=True):
  """Accuracy as the original measures it: t = eps for every sample, x̃ = mean + σ z, eval mode, no gradients.

  Returns fn(classifier, batch, labels) -> number of correct predictions (a 0-d tensor).
  """
  def correct_fn(classifier, batch, labels):
    classifier_fn = mutils.get_classifier_fn(sde, classifier, train=False, continuous=continuous)
    with torch.no_grad():
      t = torch.full((batch.shape[0],), eps, device=batch.device)
      perturbed, _ = perturb(sde, batch, t, torch.randn_like(batch))
      predictions = torch.argmax(classifier_fn(perturbed, t), dim=1)
      return (predictions == labels).sum()

  return correct_fn
