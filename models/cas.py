"""The CAS classifier (classification accuracy score): a randomly initialised torchvision ResNet trained only on
generated samples and tested on the real test split."""

import torch.nn as nn
import torchvision

ARCHITECTURES = {
  'resnet50': torchvision.models.resnet50,  # the paper's CAS network
  'resnet18': torchvision.models.resnet18,
  'resnet10': lambda num_classes: torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1],
                                                            num_classes=num_classes),  # small, for quick tests
}


def create_cas_classifier(num_classes, num_channels=3, arch='resnet50'):
  """ImageNet-layout ResNet whose conv1 is rebuilt for `num_channels` inputs with PyTorch's default init (B14)."""
  if arch not in ARCHITECTURES:
    raise ValueError(f'unknown CAS architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}')
  model = ARCHITECTURES[arch](num_classes=num_classes)
  model.conv1 = nn.Conv2d(num_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
  return model
