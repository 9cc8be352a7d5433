"""Exponential moving average of the trainable parameters (decay min(model.ema_rate, (1 + n)/(10 + n)) at update n;
ema_rate 0.999 on CIFAR), with the original's state_dict {'decay', 'num_updates', 'shadow_params': [tensors]} so EMA
entries move both ways between the codes."""
import contextlib

import torch


def _trainable(parameters):
  return [p for p in parameters if p.requires_grad]


@contextlib.contextmanager
def ema_weights(ema, parameters):
  """Inside the block the parameters hold the EMA's weights (ema.store, ema.copy_to); after it, their own values
  again (ema.restore)."""
  parameters = list(parameters)
  ema.store(parameters)
  ema.copy_to(parameters)
  try:
    yield
  finally:
    ema.restore(parameters)


class ExponentialMovingAverage:
  """Shadow copies of the parameters with requires_grad=True, paired with them by position."""

  def __init__(self, parameters, decay, use_num_updates=True):
    if decay < 0.0 or decay > 1.0:
      raise ValueError('Decay must be between 0 and 1')
    self.decay = decay
    self.num_updates = 0 if use_num_updates else None
    self.shadow_params = [p.clone().detach() for p in _trainable(parameters)]
    self.collected_params = []

  def _paired(self, parameters):
    params = _trainable(parameters)
    if len(params) != len(self.shadow_params):
      raise ValueError(f'EMA holds {len(self.shadow_params)} shadow tensors but got {len(params)} trainable '
                       'parameters; the model does not match this EMA.')
    return params

  @torch.no_grad()
  def update(self, parameters):
    """shadow <- shadow - (1 - d)(shadow - param), d = min(decay, (1 + n) / (10 + n))."""
    decay = self.decay
    if self.num_updates is not None:
      self.num_updates += 1
      decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
    params = self._paired(parameters)
    diffs = torch._foreach_sub(self.shadow_params, params)
    torch._foreach_mul_(diffs, 1.0 - decay)
    torch._foreach_sub_(self.shadow_params, diffs)

  @torch.no_grad()
  def copy_to(self, parameters):
    """Copy the shadows into the trainable parameters."""
    for shadow, param in zip(self.shadow_params, self._paired(parameters)):
      param.copy_(shadow)

  def store(self, parameters):
    """Save all parameters (for a temporary swap to the EMA weights)."""
    self.collected_params = [param.detach().clone() for param in parameters]

  @torch.no_grad()
  def restore(self, parameters):
    """Put back the parameters saved by `store`."""
    for saved, param in zip(self.collected_params, parameters):
      param.copy_(saved)

  def state_dict(self):
    return dict(decay=self.decay, num_updates=self.num_updates, shadow_params=self.shadow_params)

  @torch.no_grad()
  def load_state_dict(self, state_dict):
    """Load a shadow list (validated in count and shapes, B24) onto the current shadows' devices."""
    shadows = list(state_dict['shadow_params'])
    if len(shadows) != len(self.shadow_params):
      raise ValueError(f'EMA state has {len(shadows)} shadow tensors, the model has {len(self.shadow_params)} '
                       'trainable parameters.')
    for i, (new, old) in enumerate(zip(shadows, self.shadow_params)):
      if new.shape != old.shape:
        raise ValueError(f'EMA shadow {i} has shape {tuple(new.shape)}, the parameter has {tuple(old.shape)}.')
    self.decay = state_dict['decay']
    self.num_updates = state_dict['num_updates']
    self.shadow_params = [new.to(device=old.device, dtype=old.dtype).clone()
                          for new, old in zip(shadows, self.shadow_params)]
