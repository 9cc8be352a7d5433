"""Training losses and one-step functions: score matching, the classifier objectives (CE / DLSM / total), the
optimiser.

One implementation serves the CIFAR models and the toy: the score loss (denoising score matching with a σ-power
weighting), the classifier objectives (registered classes: ce, dlsm, total) and the optimiser step with warm-up and
clipping.
Random draws follow the original's calls and order (`torch.rand(B)` for t, then `torch.randn_like(batch)` for z), so
`torch.manual_seed(s)` reproduces the original's loss; explicit `t` and `z` may be passed instead.
"""
import inspect

import torch
import torch.nn.functional as F

import fileio
import registry
from models import utils as mutils
from models.ema import ema_weights
from models.utils import LOG_PROB_EPS, log_prob_input_grad  # noqa: F401 (the likelihood gradient, shared with guidance)
from sde_lib import batch_broadcast


SCORE_LOSS_EPS = 1e-3  # the DLSM repository trains the score model on t in [1e-3, 1] (score_sde uses 1e-5 for VE)


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


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=SCORE_LOSS_EPS,
                    weighting=1):
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


def weighted_cross_entropy(logits, labels, std, weighting_ce=0):
  """mean of CE(logits, y)·σ^(−2·weighting_ce), on the raw logits."""
  return torch.mean(F.cross_entropy(logits, labels, reduction='none') * std ** (-2 * weighting_ce))


CLASSIFIER_OBJECTIVES = {}
register_objective = registry.decorator_for(CLASSIFIER_OBJECTIVES)


class ClassifierObjective:
  """A classifier loss on noisy data, for CIFAR and the toy: t ~ U(eps, T) then z ~ N(0, I) (the original's draws and
  order, unless given), x̃ = mean(x, t) + σ(t) z, and a subclass's `loss` on the classifier's logits at (x̃, t).

  A new objective is a subclass registered by name: its hyperparameters are keyword-only __init__ parameters named
  as config.model fields, its `loss` the formula. eps defaults to the SDE's sampling eps, as the original classifier
  trainer (1e-5 VE, 1e-3 VP / sub-VP). The frozen
  score model runs in eval mode without autograd; the classifier runs in train mode when `train`, which also lets
  the DLSM term back-propagate into the parameters (create_graph).
  """
  uses_score = True  # the loss reads the score model's prior score and ∇x of the classifier

  def __init__(self, sde, eps=None, train=True):
    self.sde = sde
    self.eps = sde.sampling_eps if eps is None else eps
    self.train = train

  def __call__(self, classifier, score_model, batch, labels, t=None, z=None):
    classifier_fn = mutils.get_classifier_fn(self.sde, classifier, train=self.train, continuous=True)
    t, z = draw_time_and_noise(self.sde, batch, self.eps, t, z)
    perturbed, std = perturb(self.sde, batch, t, z)
    prior_score = 0.
    if self.uses_score:
      score_fn = mutils.get_score_fn(self.sde, score_model, train=False, continuous=True)
      with torch.no_grad():
        prior_score = score_fn(perturbed, t)
    with torch.enable_grad():  # the DLSM term needs ∇x even when evaluating
      return self.from_draws(lambda x: classifier_fn(x, t), perturbed, labels, prior_score, z, std)

  def from_draws(self, logits_fn, perturbed, labels, prior_score, z, std):
    """The loss at given draws: logits_fn(x) gives the logits at the (fixed) time of `perturbed`, `prior_score` the
    frozen score model's output there, `z` and `std` (B,) the noise and marginal std that produced `perturbed`."""
    x = perturbed.detach().clone().requires_grad_(self.uses_score)
    return self.loss(logits_fn(x), x, labels, prior_score, z, std)

  def loss(self, logits, x, labels, prior_score, z, std):
    raise NotImplementedError


@register_objective('ce')
class CrossEntropyObjective(ClassifierObjective):
  """Cross-entropy weighted by σ^(−2·weighting_ce): the base classifier."""
  uses_score = False

  def __init__(self, sde, eps=None, train=True, *, weighting_ce=0):
    super().__init__(sde, eps, train)
    self.weighting_ce = weighting_ce

  def loss(self, logits, x, labels, prior_score, z, std):
    return weighted_cross_entropy(logits, labels, std, self.weighting_ce)


@register_objective('dlsm')
class DLSMObjective(ClassifierObjective):
  """Denoising likelihood score matching: ½σ^{2·weighting_dlsm} ‖∇x log p(y|x̃) + s(x̃) + z/σ‖²."""

  def __init__(self, sde, eps=None, train=True, *, weighting_dlsm=0):
    super().__init__(sde, eps, train)
    self.weighting_dlsm = weighting_dlsm

  def loss(self, logits, x, labels, prior_score, z, std):
    grad = log_prob_input_grad(logits, x, labels, create_graph=self.train)
    return dlsm_loss(grad, prior_score, z, std, self.weighting_dlsm)


@register_objective('total')
class TotalObjective(DLSMObjective):
  """DLSM + coef·CE: the paper's "ours"."""

  def __init__(self, sde, eps=None, train=True, *, weighting_dlsm=0, weighting_ce=0, coef=1.0):
    super().__init__(sde, eps, train, weighting_dlsm=weighting_dlsm)
    self.weighting_ce = weighting_ce
    self.coef = coef

  def loss(self, logits, x, labels, prior_score, z, std):
    dlsm = super().loss(logits, x, labels, prior_score, z, std)
    return dlsm + self.coef * weighted_cross_entropy(logits, labels, std, self.weighting_ce)


def get_classifier_objective(settings, sde, eps=None, train=True):
  """The objective named by settings['loss_type'], its hyperparameters read from `settings` (config.model, where the
  original keeps them, or any mapping holding the same keys): the keyword-only parameters of its __init__."""
  name = settings['loss_type']
  if name not in CLASSIFIER_OBJECTIVES:
    raise ValueError(f'model.loss_type={name!r}: must be one of {", ".join(map(repr, CLASSIFIER_OBJECTIVES))}')
  objective = CLASSIFIER_OBJECTIVES[name]
  fields = [name for name, parameter in inspect.signature(objective.__init__).parameters.items()
            if parameter.kind == parameter.KEYWORD_ONLY]
  missing = [field for field in fields if field not in settings]
  if missing:
    raise ValueError(f'model.loss_type={name!r} needs ' + ', '.join(f'model.{field}' for field in missing))
  return objective(sde, eps, train, **{field: settings[field] for field in fields})


def get_step_fn(sde, train, optimize_fn=None, reduce_mean=False, continuous=True, likelihood_weighting=False,
                eps=SCORE_LOSS_EPS, weighting=1):
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
    with torch.no_grad(), ema_weights(state['ema'], model.parameters()):
      return loss_fn(model, batch)

  return step_fn


def get_classifier_step_fn(objective, optimize_fn=None):
  """Classifier step of a ClassifierObjective: step_fn(state, batch, labels) -> loss.
  state = {'model','score_model','optimizer','step'}.

  objective.train: one update and step += 1 (the original never counted, B1); else the loss, classifier in eval mode.
  """
  def step_fn(state, batch, labels):
    classifier = state['model']
    if not objective.train:
      return objective(classifier, state['score_model'], batch, labels).detach()
    optimizer = state['optimizer']
    optimizer.zero_grad(set_to_none=True)
    loss = objective(classifier, state['score_model'], batch, labels)
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
