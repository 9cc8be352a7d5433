"""The CAS classifier (classification accuracy score): a randomly initialised network trained only on generated
samples and tested on the real test split (a torchvision ResNet-50 in the paper; the small reference CNN on digits)."""

import torch.nn as nn

from models.reference import DigitsCNN

# torchvision.models builders, imported on first use (torchvision adds 1.5 s to every process start)
ARCHITECTURES = {
  'resnet50': lambda models, num_classes: models.resnet50(num_classes=num_classes),  # the paper's CAS network
  'resnet18': lambda models, num_classes: models.resnet18(num_classes=num_classes),
  'resnet10': lambda models, num_classes: models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1],
                                                        num_classes=num_classes),  # small, for quick tests
}


def create_cas_classifier(num_classes, num_channels=3, arch='resnet50'):
  """ImageNet-layout ResNet whose conv1 is rebuilt for `num_channels` inputs with PyTorch's default init (B14)."""
  if arch == 'digits_cnn':  # the reference classifier's architecture, for 8x8 digits
    return DigitsCNN(num_channels, num_classes)
  if arch not in ARCHITECTURES:
    raise ValueError(f'unknown CAS architecture {arch!r}; choose one of {sorted(ARCHITECTURES) + ["digits_cnn"]}')
  import torchvision
  model = ARCHITECTURES[arch](torchvision.models, num_classes)
  model.conv1 = nn.Conv2d(num_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
  return model
