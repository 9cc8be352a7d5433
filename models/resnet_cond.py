"""Time-conditioned ResNet classifiers of DLSM (the original's resnet_cond.py): `resnet18_cond`, `resnet34_cond` and the
`classifier` wrapper registered for `config.classifier.name`, conditioned on log σ(t) (VE) or log(999·t) (VP).

Module tree (= checkpoint keys): Classifier.classifier -> ResNetCond with `condition_modules` (Fourier
time embedding MLP) and `classifier` (the ResNet_cond body). Stage widths are w, 2w, 4w, 8w with
w = config.classifier.resnet_base_width (64 = the original's fixed 64/128/256/512). Inputs have
config.data.num_channels channels and any size; the last stage is averaged over all its positions (at 32x32 its
4x4 map: the same average as the original's avg_pool2d(out, 4), summed in another order, so the two differ by
float32 rounding, about 1e-7 relative).
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import layers
from models.utils import register_model


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + self.shortcut(x))


def _shortcut(in_planes, out_planes, stride):
  """Identity, or a strided 1x1 projection + BatchNorm when the shape changes."""
  if stride == 1 and in_planes == out_planes:
    return nn.Sequential()
  return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                       nn.BatchNorm2d(out_planes))


class ResNet_cond(nn.Module):
  """CIFAR ResNet whose stage outputs each receive dense_i(SiLU(temb)), added out of place (B38)."""

  def __init__(self, block, num_blocks, num_classes=10, temb_dim=128, base_width=64, in_channels=3):
    super().__init__()
    widths = [base_width * 2 ** i for i in range(4)]
    self.in_planes = widths[0]
    self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.dense_1 = nn.Linear(temb_dim, widths[0] * block.expansion)
    self.dense_2 = nn.Linear(temb_dim, widths[1] * block.expansion)
    self.dense_3 = nn.Linear(temb_dim, widths[2] * block.expansion)
    self.dense_4 = nn.Linear(temb_dim, widths[3] * block.expansion)
    self.layer1 = self._make_layer(block, widths[0], num_blocks[0], stride=1)
    self.layer2 = self._make_layer(block, widths[1], num_blocks[1], stride=2)
    self.layer3 = self._make_layer(block, widths[2], num_blocks[2], stride=2)
    self.layer4 = self._make_layer(block, widths[3], num_blocks[3], stride=2)
    self.linear = nn.Linear(widths[3] * block.expansion, num_classes)

  def _make_layer(self, block, planes, num_blocks, stride):
    blocks = []
    for s in [stride] + [1] * (num_blocks - 1):
      blocks.append(block(self.in_planes, planes, s))
      self.in_planes = planes * block.expansion
    return nn.Sequential(*blocks)

  def forward(self, x, temb):
    emb = F.silu(temb)
    out = F.relu(self.bn1(self.conv1(x)))
    for layer, inject in ((self.layer1, self.dense_1), (self.layer2, self.dense_2),
                          (self.layer3, self.dense_3), (self.layer4, self.dense_4)):
      out = layer(out) + inject(emb)[:, :, None, None]
    out = F.adaptive_avg_pool2d(out, 1)
    return self.linear(out.flatten(1))


class ResNetCond(nn.Module):
  """Time embedding (Fourier of log c -> Linear -> act -> Linear) feeding a ResNet_cond body."""

  def __init__(self, config, block, num_blocks):
    super().__init__()
    nf = config.classifier.nf
    self.act = layers.get_act(config)
    self.condition_modules = nn.ModuleList([
        layers.GaussianFourierProjection(embedding_size=nf, scale=config.classifier.fourier_scale),
        layers.dense(2 * nf, 4 * nf),
        layers.dense(4 * nf, 4 * nf),
    ])
    self.classifier = ResNet_cond(block, num_blocks, num_classes=config.classifier.classes, temb_dim=4 * nf,
                                  base_width=config.classifier.get('resnet_base_width', 64),
                                  in_channels=config.data.num_channels)

  def forward(self, x, time_cond):
    fourier, linear_1, linear_2 = self.condition_modules
    temb = linear_2(self.act(linear_1(fourier(torch.log(time_cond)))))
    return self.classifier(x, temb)


def resnet18_cond(config):
  return ResNetCond(config, BasicBlock, [2, 2, 2, 2])


def resnet34_cond(config):
  return ResNetCond(config, BasicBlock, [3, 4, 6, 3])


_CLASSIFIER_BODIES = {'resnet18_cond': resnet18_cond, 'resnet34_cond': resnet34_cond}


@register_model('classifier')
class Classifier(nn.Module):
  """The registered `classifier`: forward(x, time_cond) -> logits, time_cond = σ(t) (VE) or 999·t (VP)."""

  def __init__(self, config):
    super().__init__()
    name = config.classifier.model
    if name not in _CLASSIFIER_BODIES:
      raise ValueError(f'Unknown classifier.model {name!r}; known: {sorted(_CLASSIFIER_BODIES)}')
    self.classifier = _CLASSIFIER_BODIES[name](config)

  def forward(self, x, time_cond):
    return self.classifier(x, time_cond)

  SHAPE_FIELDS = ('classifier.model (blocks per layer), classifier.classes (linear.weight rows), classifier.nf '
                  '(time embedding), classifier.resnet_base_width (stage widths)')

  @staticmethod
  def describe_state_dict(state_dict):
    """Config fields readable from a `classifier` state_dict ('module.' prefix stripped)."""
    prefix = 'classifier.classifier.'
    shapes = {'classifier.nf': ('classifier.condition_modules.0.W', 0),
              'classifier.resnet_base_width': (prefix + 'conv1.weight', 0),
              'classifier.classes': (prefix + 'linear.weight', 0)}
    fields = {field: state_dict[key].shape[dim] for field, (key, dim) in shapes.items() if key in state_dict}
    counts = _blocks_per_layer(state_dict, prefix)
    known = {(2, 2, 2, 2): 'resnet18_cond', (3, 4, 6, 3): 'resnet34_cond'}
    if any(counts):
      fields['classifier.model'] = known.get(tuple(counts), f'blocks per layer {counts}')
    fields['state_dict entries'] = len(state_dict)
    return fields


def _blocks_per_layer(state_dict, prefix):
  pattern = re.compile(r'^' + re.escape(prefix) + r'layer(\d)\.(\d+)\.')
  blocks = {}
  for match in filter(None, map(pattern.match, state_dict)):
    layer, index = int(match.group(1)), int(match.group(2))
    blocks[layer] = max(blocks.get(layer, 0), index + 1)
  return [blocks.get(layer, 0) for layer in (1, 2, 3, 4)]
