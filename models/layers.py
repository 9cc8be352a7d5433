"""Building blocks of NCSN++: initialisers, convolutions, noise-level embeddings, FIR resampling in plain PyTorch
(the original compiled a CUDA upfirdn2d kernel), residual/attention blocks, Upsample/Downsample and Combine.

Construction order and random draws follow the original code (so the same seed should give the original's
initial weights); parameter names and registration order match its checkpoints.
"""
import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def residual_sum(x, h, skip_rescale):
  """x + h, divided by √2 when `skip_rescale` (keeps the variance of two unit-variance branches)."""
  return (x + h) / SQRT2 if skip_rescale else x + h


def get_act(config):
  """The activation named by `config.model.nonlinearity` (elu, relu, lrelu, swish)."""
  name = config.model.nonlinearity.lower()
  if name == 'elu':
    return nn.ELU()
  if name == 'relu':
    return nn.ReLU()
  if name == 'lrelu':
    return nn.LeakyReLU(negative_slope=0.2)
  if name == 'swish':
    return nn.SiLU()
  raise NotImplementedError(f'activation function {name!r} does not exist')


# ------------------------------------------------------------------------------------------------
# Initialisation

def default_init(scale=1.0):
  """Variance scaling, fan_avg, uniform (JAX-style fans: in = shape[1], out = shape[0]); 0 -> 1e-10."""
  scale = 1e-10 if scale == 0 else scale

  def init(shape, dtype=torch.float32, device=None):
    receptive = np.prod(shape) / shape[1] / shape[0]
    fan_avg = (shape[1] * receptive + shape[0] * receptive) / 2
    variance = scale / fan_avg
    return (torch.rand(*shape, dtype=dtype, device=device) * 2.0 - 1.0) * np.sqrt(3 * variance)

  return init


def _initialised(layer, init_scale):
  """The layer with `default_init(init_scale)` weights and a zero bias (drawn after PyTorch's own init, as the
  original, so a seed gives the same weights)."""
  layer.weight.data = default_init(init_scale)(layer.weight.shape)
  if layer.bias is not None:
    nn.init.zeros_(layer.bias)
  return layer


def conv3x3(in_planes, out_planes, stride=1, bias=True, init_scale=1.0, padding=1):
  return _initialised(nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=padding, bias=bias), init_scale)


def conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1.0, padding=0):
  return _initialised(nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=padding, bias=bias), init_scale)


def dense(in_features, out_features, init_scale=1.0):
  """nn.Linear with `default_init` weights and zero bias."""
  return _initialised(nn.Linear(in_features, out_features), init_scale)


def group_norm(channels):
  return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


class NIN(nn.Module):
  """1x1 linear layer with weight `W` stored (in, out), transposed relative to nn.Linear."""

  def __init__(self, in_dim, num_units, init_scale=0.1):
    super().__init__()
    self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)))
    self.b = nn.Parameter(torch.zeros(num_units))

  def forward(self, x):
    return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


# ------------------------------------------------------------------------------------------------
# Noise-level embeddings

class GaussianFourierProjection(nn.Module):
  """[sin(2π u W), cos(2π u W)] with a frozen (but saved) random W ~ N(0, scale²)."""

  def __init__(self, embedding_size=256, scale=1.0):
    super().__init__()
    self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

  def forward(self, x):
    x_proj = x[:, None] * self.W[None, :] * 2 * np.pi
    return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """Sinusoidal embedding of a (B,) tensor: all sines, then all cosines (zero column if odd)."""
  assert timesteps.ndim == 1
  half_dim = embedding_dim // 2
  step = math.log(max_positions) / (half_dim - 1)
  freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -step)
  args = timesteps.float()[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
  if embedding_dim % 2 == 1:
    emb = F.pad(emb, (0, 1))
  return emb


# ------------------------------------------------------------------------------------------------
# FIR resampling (upfirdn2d semantics: convolution with the kernel, i.e. correlation with its flip)

def as_taps(kernel):
  """Hashable (tuple) form of 1-D taps or a 2-D kernel, in plain Python (traceable by torch.compile)."""
  if hasattr(kernel[0], '__len__'):
    return tuple(tuple(float(v) for v in row) for row in kernel)
  return tuple(float(v) for v in kernel)


def fir_kernel_2d(taps, gain=1.0):
  """2-D float32 kernel from 1-D taps (outer product) or a 2-D kernel, normalised to sum 1, times gain."""
  k = torch.tensor(as_taps(taps), dtype=torch.float32)
  if k.ndim == 1:
    k = torch.outer(k, k)
  return k / k.sum() * gain


def _depthwise_weight(taps, gain, channels, flip, device, dtype):
  """(channels, 1, kh, kw) weight of a grouped convolution applying the kernel to every channel."""
  k = fir_kernel_2d(taps, gain)
  k = k.flip(0, 1) if flip else k
  return k.to(device=device, dtype=dtype)[None, None].repeat(channels, 1, 1, 1)


@functools.lru_cache(maxsize=256)
def _cached_depthwise_weight(*args):
  with torch.inference_mode(False):  # must stay usable by autograd even if first made under inference
    return _depthwise_weight(*args)


def _fir_weight(x, taps, gain=1.0, flip=True):
  args = (as_taps(taps), float(gain), x.shape[1], flip, x.device, x.dtype)
  if torch.compiler.is_compiling():  # constants for the compiled graph; the cache is for eager calls
    return _depthwise_weight(*args)
  return _cached_depthwise_weight(*args)


def fir_filter(x, taps, pad0, pad1, gain=1.0, down=1):
  """upfirdn2d without up-sampling: pad (pad0 before, pad1 after), convolve, keep every `down`-th."""
  weight = _fir_weight(x, taps, gain)
  if pad0 == pad1 and pad0 >= 0:
    return F.conv2d(x, weight, stride=down, padding=pad0, groups=x.shape[1])
  x = F.pad(x, (pad0, pad1, pad0, pad1))
  return F.conv2d(x, weight, stride=down, groups=x.shape[1])


def downsample_2d(x, taps=(1, 3, 3, 1), factor=2, gain=1.0):
  """FIR down-sampling: pad, convolve each channel with the normalised kernel, keep every factor-th pixel."""
  p = len(taps) - factor
  return fir_filter(x, taps, (p + 1) // 2, p // 2, gain=gain, down=factor)


def upsample_2d(x, taps=(1, 3, 3, 1), factor=2, gain=1.0):
  """FIR up-sampling: zero insertion + pad + convolution, done as one depthwise transposed conv."""
  n = len(taps)
  p = n - factor
  pad0, pad1 = (p + 1) // 2 + factor - 1, p // 2
  weight = _fir_weight(x, taps, gain * factor ** 2, flip=False)
  # The transposed conv gives out[o] = sum_i x[i] k[o - factor i]; upfirdn2d's output is that sequence
  # from index n - 1 - pad0 on, ending pad1 + factor - n entries past its end (negative: before it).
  before, after = n - 1 - pad0, pad1 + factor - n
  if before >= 0 and after == -before:
    return F.conv_transpose2d(x, weight, stride=factor, padding=before, groups=x.shape[1])
  out = F.conv_transpose2d(x, weight, stride=factor, groups=x.shape[1])
  return F.pad(out, (-before, after, -before, after))


def upfirdn2d_reference(x, taps, up=1, down=1, pad=(0, 0), gain=1.0):
  """Slow reference of the original's CPU upfirdn2d (zero insertion, padding, per-channel convolution
  with the flipped kernel, strided slicing); for tests and benchmarks only."""
  B, C, H, W = x.shape
  kernel = fir_kernel_2d(taps, gain).to(x)
  u = F.pad(x.reshape(B * C, 1, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(B * C, 1, H * up, W * up)
  u = F.pad(u, (pad[0], pad[1], pad[0], pad[1]))
  out = F.conv2d(u, kernel.flip(0, 1)[None, None])[:, :, ::down, ::down]
  return out.reshape(B, C, *out.shape[-2:])


def naive_upsample_2d(x, factor=2):
  """Nearest-neighbour up-sampling (each pixel repeated factor x factor)."""
  return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def naive_downsample_2d(x, factor=2):
  """Mean over factor x factor blocks."""
  B, C, H, W = x.shape
  return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


class FIRConv2d(nn.Module):
  """Convolution fused with FIR up- or down-sampling (`Conv2d` of the original's up_or_down_sampling)."""

  def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1)):
    super().__init__()
    assert not (up and down) and kernel >= 1 and kernel % 2 == 1
    self.weight = nn.Parameter(default_init()((out_ch, in_ch, kernel, kernel)))
    self.bias = nn.Parameter(torch.zeros(out_ch))
    self.up, self.down = up, down
    self.resample_kernel = as_taps(resample_kernel)
    self.kernel = kernel

  def forward(self, x):
    if self.up:
      x = self._upsample_conv(x)
    elif self.down:
      x = self._conv_downsample(x)
    else:
      x = F.conv2d(x, self.weight, padding=self.kernel // 2)
    return x + self.bias.reshape(1, -1, 1, 1)

  def _upsample_conv(self, x):
    """Stride-2 transposed conv with the flipped weight, then the FIR blur with gain 4 (the TF original's
    fused up-sampling convolution; the PyTorch original crashed here)."""
    p = (len(self.resample_kernel) - 2) - (self.kernel - 1)
    x = F.conv_transpose2d(x, self.weight.flip(2, 3).transpose(0, 1), stride=2)
    return fir_filter(x, self.resample_kernel, (p + 1) // 2 + 1, p // 2 + 1, gain=4.0)

  def _conv_downsample(self, x):
    """FIR blur (no resampling), then a stride-2 valid convolution."""
    p = (len(self.resample_kernel) - 2) + (self.kernel - 1)
    x = fir_filter(x, self.resample_kernel, (p + 1) // 2, p // 2)
    return F.conv2d(x, self.weight, stride=2)


class Upsample(nn.Module):
  """Stand-alone ×2 up-sampling: nearest or FIR, optionally with a (fused) convolution."""

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch if out_ch else in_ch
    if with_conv and not fir:
      self.Conv_0 = conv3x3(in_ch, out_ch)
    elif with_conv:
      self.Conv2d_0 = FIRConv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel)
    self.fir, self.with_conv, self.fir_kernel = fir, with_conv, as_taps(fir_kernel)

  def forward(self, x):
    if not self.fir:
      h = naive_upsample_2d(x)
      return self.Conv_0(h) if self.with_conv else h
    if self.with_conv:
      return self.Conv2d_0(x)
    return upsample_2d(x, self.fir_kernel)


class Downsample(nn.Module):
  """Stand-alone ×2 down-sampling: average pool or FIR, optionally with a convolution."""

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch if out_ch else in_ch
    if with_conv and not fir:
      self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
    elif with_conv:
      self.Conv2d_0 = FIRConv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel)
    self.fir, self.with_conv, self.fir_kernel = fir, with_conv, as_taps(fir_kernel)

  def forward(self, x):
    if not self.fir:
      if self.with_conv:
        return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
      return F.avg_pool2d(x, 2, stride=2)
    if self.with_conv:
      return self.Conv2d_0(x)
    return downsample_2d(x, self.fir_kernel)


class Combine(nn.Module):
  """Input-skip pyramid merge: 1x1 conv of the pyramid image, then concatenated with or added to h."""

  def __init__(self, dim1, dim2, method='cat'):
    super().__init__()
    self.Conv_0 = conv1x1(dim1, dim2)
    self.method = method

  def forward(self, x, y):
    h = self.Conv_0(x)
    if self.method == 'cat':
      return torch.cat([h, y], dim=1)
    if self.method == 'sum':
      return h + y
    raise ValueError(f'Method {self.method} not recognized.')


# ------------------------------------------------------------------------------------------------
# Residual and attention blocks

class AttnBlockpp(nn.Module):
  """Single-head self-attention over all H·W positions with a residual connection."""

  def __init__(self, channels, skip_rescale=False, init_scale=0.0):
    super().__init__()
    self.GroupNorm_0 = group_norm(channels)
    self.NIN_0 = NIN(channels, channels)
    self.NIN_1 = NIN(channels, channels)
    self.NIN_2 = NIN(channels, channels)
    self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
    self.skip_rescale = skip_rescale

  def forward(self, x):
    B, C, H, W = x.shape
    h = self.GroupNorm_0(x)
    # q, k, v in one 1x1 convolution; laid out (B, 1, H·W, C) for scaled_dot_product_attention.
    w_qkv = torch.cat([self.NIN_0.W, self.NIN_1.W, self.NIN_2.W], dim=1).t()[:, :, None, None]
    b_qkv = torch.cat([self.NIN_0.b, self.NIN_1.b, self.NIN_2.b])
    qkv = F.conv2d(h, w_qkv, b_qkv).reshape(B, 3, C, H * W).transpose(2, 3)
    q, k, v = qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3]
    h = F.scaled_dot_product_attention(q, k, v, scale=int(C) ** (-0.5))
    h = self.NIN_3(h.transpose(2, 3).reshape(B, C, H, W))
    return residual_sum(x, h, self.skip_rescale)


@dataclasses.dataclass(frozen=True)
class BlockSettings:
  """What every residual block of one network shares: the activation, the time-embedding width (None: no time
  input), the dropout rate, the last convolution's init scale and whether the residual sum is divided by √2."""
  act: nn.Module
  temb_dim: int = None
  dropout: float = 0.1
  init_scale: float = 0.0
  skip_rescale: bool = True


class _ResidualBlock(nn.Module):
  """The path both residual blocks share: GN, act, [resample], conv; + Dense(act(temb)); GN, act, dropout, conv.

  Sub-modules are registered (and initialised) in the original's order, which fixes checkpoint keys and random draws.
  """

  def _add_path(self, settings, in_ch, out_ch):
    act, temb_dim, dropout, init_scale = settings.act, settings.temb_dim, settings.dropout, settings.init_scale
    self.GroupNorm_0 = group_norm(in_ch)
    self.Conv_0 = conv3x3(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = dense(temb_dim, out_ch)
    self.GroupNorm_1 = group_norm(out_ch)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
    self.act = act

  def _convolve(self, h, temb):
    """From the first convolution on: h is the normalised, activated (and resampled) input."""
    h = self.Conv_0(h)
    if temb is not None:
      h = h + self.Dense_0(self.act(temb))[:, :, None, None]
    return self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))


class ResnetBlockBigGANpp(_ResidualBlock):
  """BigGAN-style residual block; up/down-sampling by FIR (or nearest / 2x2 mean) inside, a 1x1 shortcut conv
  when the width or the resolution changes."""

  def __init__(self, settings, in_ch, out_ch=None, up=False, down=False, fir=False, fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch if out_ch else in_ch
    self._add_path(settings, in_ch, out_ch)
    self.has_shortcut_conv = in_ch != out_ch or up or down
    if self.has_shortcut_conv:
      self.Conv_2 = conv1x1(in_ch, out_ch)
    self.up, self.down, self.fir, self.fir_kernel = up, down, fir, as_taps(fir_kernel)
    self.skip_rescale = settings.skip_rescale

  def _resample(self, x):
    if self.up:
      return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
    if self.down:
      return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
    return x

  def forward(self, x, temb=None):
    h = self._convolve(self._resample(self.act(self.GroupNorm_0(x))), temb)
    x = self._resample(x)
    if self.has_shortcut_conv:
      x = self.Conv_2(x)
    return residual_sum(x, h, self.skip_rescale)


class ResnetBlockDDPMpp(_ResidualBlock):
  """DDPM-style residual block without resampling; a NIN (or 3x3 conv) shortcut when the width changes."""

  def __init__(self, settings, in_ch, out_ch=None, conv_shortcut=False):
    super().__init__()
    out_ch = out_ch if out_ch else in_ch
    self._add_path(settings, in_ch, out_ch)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = conv3x3(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)
    self.skip_rescale, self.out_ch, self.conv_shortcut = settings.skip_rescale, out_ch, conv_shortcut

  def forward(self, x, temb=None):
    h = self._convolve(self.act(self.GroupNorm_0(x)), temb)
    if x.shape[1] != self.out_ch:
      x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
    return residual_sum(x, h, self.skip_rescale)
