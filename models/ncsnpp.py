"""NCSN++: the score network of the DLSM CIFAR experiments (a U-Net of BigGAN residual blocks with FIR resampling,
attention at 16x16 and a residual input pyramid), with every option of the original (fourier/positional embedding,
biggan/ddpm blocks, progressive variants, FIR or naive resampling, ...).

All sub-modules live in one `all_modules` list, appended in the order the forward pass consumes them,
which fixes the checkpoint keys `all_modules.<i>.*` of the original.
"""
import functools
import re

import numpy as np
import torch
import torch.nn as nn

from models import layers
from models.utils import register_model


def get_sigmas(config):
  """The VE noise table, descending from sigma_max (float64, computed with NumPy as the original)."""
  return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                            config.model.num_scales))


@register_model('ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ U-Net; forward(x, time_cond) with time_cond = σ (VE), 999·t (VP) or a discrete index."""

  def __init__(self, config):
    super().__init__()
    self.act = layers.get_act(config)
    self.register_buffer('sigmas', torch.tensor(get_sigmas(config)))
    arch = config.model  # the architecture fields
    self.nf = arch.nf
    self.ch_mult = tuple(arch.ch_mult)
    self.num_res_blocks = arch.num_res_blocks
    self.attn_resolutions = tuple(arch.attn_resolutions)
    self.num_resolutions = len(self.ch_mult)
    self.all_resolutions = [config.data.image_size // (2 ** i) for i in range(self.num_resolutions)]
    self.conditional = arch.conditional
    self.skip_rescale = arch.skip_rescale
    self.resblock_type = arch.resblock_type.lower()
    self.progressive = arch.progressive.lower()
    self.progressive_input = arch.progressive_input.lower()
    self.embedding_type = arch.embedding_type.lower()
    self.combine_method = arch.progressive_combine.lower()
    self.centered = config.data.centered
    self.scale_by_sigma = arch.scale_by_sigma
    self.preconditioning = arch.get('preconditioning', 'none').lower()  # the original's configs lack the field
    assert self.progressive in ('none', 'output_skip', 'residual')
    assert self.preconditioning in ('none', 'edm'), f'model.preconditioning {self.preconditioning!r}: none or edm'
    assert self.preconditioning == 'none' or self.embedding_type == 'fourier', 'edm preconditioning needs σ input'
    assert self.progressive_input in ('none', 'input_skip', 'residual')
    assert self.embedding_type in ('fourier', 'positional')
    assert self.resblock_type in ('ddpm', 'biggan'), f'resblock type {self.resblock_type} unrecognized.'
    if self.progressive == 'output_skip':
      self.pyramid_upsample = layers.Upsample(fir=arch.fir, fir_kernel=arch.fir_kernel, with_conv=False)
    if self.progressive_input == 'input_skip':
      self.pyramid_downsample = layers.Downsample(fir=arch.fir, fir_kernel=arch.fir_kernel, with_conv=False)
    self.all_modules = nn.ModuleList(self._build_modules(config))
    if self.preconditioning == 'edm':  # a checkpoint carries it: loading one into the other kind of model fails
      self.register_buffer('sigma_data', torch.tensor(float(arch.sigma_data)))

  # ----------------------------------------------------------------------------------------------
  # Construction: one list, appended in the order the forward pass consumes it

  def _block_factories(self, config):
    arch = config.model
    settings = layers.BlockSettings(self.act, temb_dim=self.nf * 4, dropout=arch.dropout, init_scale=arch.init_scale,
                                    skip_rescale=arch.skip_rescale)
    if self.resblock_type == 'ddpm':
      resblock = functools.partial(layers.ResnetBlockDDPMpp, settings)
    else:
      resblock = functools.partial(layers.ResnetBlockBigGANpp, settings, fir=arch.fir, fir_kernel=arch.fir_kernel)
    attn = functools.partial(layers.AttnBlockpp, init_scale=arch.init_scale, skip_rescale=arch.skip_rescale)
    return resblock, attn

  def _build_modules(self, config):
    arch, nf = config.model, self.nf
    modules = []
    if self.embedding_type == 'fourier':
      assert config.training.continuous, 'Fourier features are only used for continuous training.'
      modules.append(layers.GaussianFourierProjection(embedding_size=nf, scale=arch.fourier_scale))
      embed_dim = 2 * nf
    else:
      embed_dim = nf
    if self.conditional:
      modules += [layers.dense(embed_dim, nf * 4), layers.dense(nf * 4, nf * 4)]
    channels = config.data.num_channels
    modules.append(layers.conv3x3(channels, nf))
    hs_c, in_ch = self._build_encoder(config, modules)
    self._build_decoder(config, modules, hs_c, in_ch)
    assert not hs_c
    return modules

  def _build_encoder(self, config, modules):
    """Down path and middle; returns the skip widths and the running width."""
    arch, nf = config.model, self.nf
    resblock, attn = self._block_factories(config)
    hs_c, in_ch, pyramid_ch = [nf], nf, config.data.num_channels
    for i_level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        out_ch = nf * self.ch_mult[i_level]
        modules.append(resblock(in_ch=in_ch, out_ch=out_ch))
        in_ch = out_ch
        if self.all_resolutions[i_level] in self.attn_resolutions:
          modules.append(attn(channels=in_ch))
        hs_c.append(in_ch)
      if i_level != self.num_resolutions - 1:
        if self.resblock_type == 'ddpm':
          modules.append(layers.Downsample(in_ch=in_ch, with_conv=arch.resamp_with_conv, fir=arch.fir,
                                           fir_kernel=arch.fir_kernel))
        else:
          modules.append(resblock(down=True, in_ch=in_ch))
        if self.progressive_input == 'input_skip':
          modules.append(layers.Combine(dim1=pyramid_ch, dim2=in_ch, method=self.combine_method))
          if self.combine_method == 'cat':
            in_ch *= 2
        elif self.progressive_input == 'residual':
          modules.append(layers.Downsample(in_ch=pyramid_ch, out_ch=in_ch, fir=arch.fir, fir_kernel=arch.fir_kernel,
                                           with_conv=True))
          pyramid_ch = in_ch
        hs_c.append(in_ch)
    in_ch = hs_c[-1]
    modules += [resblock(in_ch=in_ch), attn(channels=in_ch), resblock(in_ch=in_ch)]
    return hs_c, in_ch

  def _build_decoder(self, config, modules, hs_c, in_ch):
    """Up path, output pyramid and output head."""
    arch, nf, channels = config.model, self.nf, config.data.num_channels
    resblock, attn = self._block_factories(config)
    pyramid_ch = 0
    for i_level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        out_ch = nf * self.ch_mult[i_level]
        modules.append(resblock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
        in_ch = out_ch
      if self.all_resolutions[i_level] in self.attn_resolutions:
        modules.append(attn(channels=in_ch))
      if self.progressive != 'none':
        if i_level == self.num_resolutions - 1:
          pyramid_ch = channels if self.progressive == 'output_skip' else in_ch
          init_scale = arch.init_scale if self.progressive == 'output_skip' else 1.0
          modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, pyramid_ch, init_scale=init_scale)]
        elif self.progressive == 'output_skip':
          modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, channels, init_scale=arch.init_scale)]
        else:
          modules.append(layers.Upsample(in_ch=pyramid_ch, out_ch=in_ch, fir=arch.fir, fir_kernel=arch.fir_kernel,
                                         with_conv=True))
          pyramid_ch = in_ch
      if i_level != 0:
        if self.resblock_type == 'ddpm':
          modules.append(layers.Upsample(in_ch=in_ch, with_conv=arch.resamp_with_conv, fir=arch.fir,
                                         fir_kernel=arch.fir_kernel))
        else:
          modules.append(resblock(in_ch=in_ch, up=True))
    if self.progressive != 'output_skip':
      modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, channels, init_scale=arch.init_scale)]

  # ----------------------------------------------------------------------------------------------
  # Forward: time embedding, x -> 2x - 1 for uncentred data, encoder, middle, decoder, optional ÷σ

  def forward(self, x, time_cond):
    modules = iter(list(self.all_modules))  # consumed in construction order
    temb, used_sigmas = self._embed_time(modules, time_cond)
    sigma = used_sigmas.reshape((x.shape[0], *([1] * len(x.shape[1:]))))
    if self.preconditioning == 'edm':
      return self._edm_score(modules, x, temb, sigma)
    if not self.centered:
      x = 2 * x - 1.0  # data in [0, 1]
    h = self._network(modules, x, temb)
    return h / sigma if self.scale_by_sigma else h

  def _network(self, modules, x, temb):
    hs = self._encode(modules, x, temb)
    h = self._decode(modules, hs, temb)
    assert next(modules, None) is None
    return h

  def _edm_score(self, modules, x, temb, sigma):
    """Karras et al. (2022): the score (D - x)/σ² of the denoiser D = c_skip·x + c_out·F(c_in·x), x centred (data
    of std model.sigma_data). Its -x/(σ² + σ_d²) term carries the noise's norm, which F (GroupNorm at its output)
    cannot follow."""
    x = x if self.centered else x - 0.5  # data in [0, 1]
    scale = torch.sqrt(sigma ** 2 + self.sigma_data ** 2)
    h = self._network(modules, x / scale, temb)
    return -x / scale ** 2 + h * (self.sigma_data / (sigma * scale))

  def _embed_time(self, modules, time_cond):
    """Noise-level embedding, and the σ that `scale_by_sigma` divides by."""
    if self.embedding_type == 'fourier':
      used_sigmas = time_cond
      temb = next(modules)(torch.log(used_sigmas))
    else:
      used_sigmas = self.sigmas[time_cond.long()]  # float64: promotes a scaled output to float64
      temb = layers.get_timestep_embedding(time_cond, self.nf)
    if not self.conditional:
      return None, used_sigmas
    temb = next(modules)(temb)
    temb = next(modules)(self.act(temb))
    return temb, used_sigmas

  def _encode(self, modules, x, temb):
    """Down path and middle; returns the skip stack with the middle output on top."""
    input_pyramid = x
    hs = [next(modules)(x)]
    for i_level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = next(modules)(hs[-1], temb)
        if h.shape[-1] in self.attn_resolutions:
          h = next(modules)(h)
        hs.append(h)
      if i_level != self.num_resolutions - 1:
        h = next(modules)(hs[-1]) if self.resblock_type == 'ddpm' else next(modules)(hs[-1], temb)
        if self.progressive_input == 'input_skip':
          input_pyramid = self.pyramid_downsample(input_pyramid)
          h = next(modules)(input_pyramid, h)
        elif self.progressive_input == 'residual':
          input_pyramid = layers.residual_sum(next(modules)(input_pyramid), h, self.skip_rescale)
          h = input_pyramid
        hs.append(h)
    h = next(modules)(hs[-1], temb)
    h = next(modules)(h)
    hs.append(next(modules)(h, temb))
    return hs

  def _decode(self, modules, hs, temb):
    h, pyramid = hs.pop(), None
    for i_level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
      if h.shape[-1] in self.attn_resolutions:
        h = next(modules)(h)
      if self.progressive != 'none':
        h, pyramid = self._output_pyramid(modules, i_level, h, pyramid)
      if i_level != 0:
        h = next(modules)(h) if self.resblock_type == 'ddpm' else next(modules)(h, temb)
    assert not hs
    if self.progressive == 'output_skip':
      return pyramid
    h = self.act(next(modules)(h))
    return next(modules)(h)

  def _output_pyramid(self, modules, i_level, h, pyramid):
    """One level of the `output_skip` / `residual` output pyramid; returns the new (h, pyramid)."""
    if i_level == self.num_resolutions - 1:
      pyramid = self.act(next(modules)(h))
      return h, next(modules)(pyramid)
    if self.progressive == 'output_skip':
      pyramid = self.pyramid_upsample(pyramid)
      pyramid_h = self.act(next(modules)(h))
      return h, pyramid + next(modules)(pyramid_h)
    pyramid = layers.residual_sum(next(modules)(pyramid), h, self.skip_rescale)
    return pyramid, pyramid

  # ----------------------------------------------------------------------------------------------
  # What a checkpoint's shapes say about the config (for the errors of models/checkpoint.py)

  SHAPE_FIELDS = ('model.nf, model.ch_mult, model.num_res_blocks, model.attn_resolutions, model.embedding_type, '
                  'model.num_scales (the sigmas buffer), model.conditional, model.resblock_type, model.progressive, '
                  'model.progressive_input, model.progressive_combine, model.preconditioning (the sigma_data buffer)')

  @staticmethod
  def describe_state_dict(state_dict):
    """Config fields readable from an NCSN++ state_dict of BigGAN blocks ('module.' prefix stripped)."""
    fields = {'model.preconditioning': 'edm' if 'sigma_data' in state_dict else 'none'}
    if 'sigmas' in state_dict:
      fields['model.num_scales'] = state_dict['sigmas'].shape[0]
    if 'all_modules.0.W' in state_dict:
      fields['model.embedding_type'] = 'fourier'
      fields['model.nf'] = state_dict['all_modules.0.W'].shape[0]
    blocks = _module_indices(state_dict, 'Conv_1.weight')
    if blocks:
      fields.update(_block_layout(state_dict, blocks, fields.get('model.nf')))
      fields['attention blocks'] = len(_module_indices(state_dict, 'NIN_0.W'))
      fields['state_dict entries'] = len(state_dict)
    return fields


def _module_indices(state_dict, suffix):
  pattern = re.compile(r'^all_modules\.(\d+)\.' + re.escape(suffix) + '$')
  return sorted(int(m.group(1)) for m in map(pattern.match, state_dict) if m)


def _block_layout(state_dict, blocks, nf):
  """nf, num_res_blocks and ch_mult from the residual blocks: levels L hold 3L + 2L·repeats blocks."""
  widths = [state_dict[f'all_modules.{i}.Conv_0.weight'].shape[:2] for i in blocks]
  skip_shapes = [state_dict[f'all_modules.{i}.Conv_2.weight'].shape for i in blocks
                 if f'all_modules.{i}.Conv_2.weight' in state_dict]
  levels = sum(1 for shape in skip_shapes if shape[0] == shape[1]) // 2 + 1  # down + up resampling blocks
  repeats, remainder = divmod(len(blocks) - 3 * levels, 2 * levels)
  fields = {'model.nf': nf or widths[0][1]}
  if remainder == 0 and repeats > 0:
    fields['model.num_res_blocks'] = repeats
    fields['model.ch_mult'] = tuple(int(widths[level * (repeats + 1)][0]) // fields['model.nf']
                                    for level in range(levels))
  return fields
