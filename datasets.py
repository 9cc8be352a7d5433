"""Data sets behind one registry, `DATASETS`: config.data.dataset -> loader of (uint8 NHWC images, int64 labels).

CIFAR-10/100 come from a local folder (never downloaded); `digits` is scikit-learn's 8x8 handwritten digits (inside
its wheel); `moons` is the toy's point set (float positions instead of images). Adding a data set means one loader
and its `@register_dataset` line. Training, the evaluation's stat file and the CAS test split all read data through
`load_split`.

Batches are float32 in [0, 1] (images: NCHW; moons: [B, 2]) with int64 labels; the model-side scaler is applied by
the trainer. Shuffling, flips and dequantisation noise come from seeded torch generators, so a run is reproducible (B30).

MD5 policy (torchvision's own check refuses every folder but the official one): each file of the folder is hashed
against torchvision's official MD5s. All match -> the official release, verified. None match -> a CIFAR-format folder
made elsewhere (e.g. by the tests), accepted with a log line and checked for shape and labels. Some match and some
do not -> a damaged copy of the official release, refused.
"""
import functools
import logging
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F

import registry

# config.data.dataset -> loader(config, train) returning (images uint8 NHWC | points, labels int64)
DATASETS = {}
register_dataset = registry.decorator_for(DATASETS)


class DatasetNotFoundError(FileNotFoundError):
  """The dataset folder or one of its files is missing."""


class DatasetIntegrityError(ValueError):
  """The dataset files exist but are damaged or not in the expected format."""


class _WithoutTorchvisionMD5Check:
  """torchvision's CIFAR reader minus its MD5 checks, which `verify_cifar_folder` replaces."""

  def _check_integrity(self):
    return True

  def _load_meta(self):
    with open(os.path.join(self.root, self.base_folder, self.meta['filename']), 'rb') as file:
      self.classes = pickle.load(file, encoding='latin1')[self.meta['key']]
    self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


CIFAR_NAMES = {'CIFAR10': ('CIFAR10', 10, 'CIFAR-10'), 'CIFAR100': ('CIFAR100', 100, 'CIFAR-100')}


@functools.cache
def cifar_reader(dataset):
  """torchvision's CIFAR-10 or CIFAR-100 reader without its MD5 check. torchvision is imported here, on first use:
  it costs every process 1.5 s of start-up (it loads torch._dynamo), which the digits and toy runs never need."""
  if dataset not in CIFAR_NAMES:
    raise ValueError(f'{dataset!r} is not a CIFAR data set; expected one of {sorted(CIFAR_NAMES)}.')
  import torchvision
  name, num_classes, display_name = CIFAR_NAMES[dataset]
  return type(f'Local{name}', (_WithoutTorchvisionMD5Check, getattr(torchvision.datasets, name)),
              dict(num_classes=num_classes, display_name=display_name))


def cifar_files(reader):
  """{file name: official MD5} of every file of the extracted archive that the reader needs."""
  files = dict(reader.train_list + reader.test_list)
  files[reader.meta['filename']] = reader.meta['md5']
  return files


def verify_cifar_folder(root, dataset):
  """Check presence and MD5s (see the module docstring); returns 'official' or 'custom'."""
  reader = cifar_reader(dataset)
  folder = os.path.join(root, reader.base_folder)
  files = cifar_files(reader)
  missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
  if missing:
    raise DatasetNotFoundError(
        f'{reader.display_name} not found: expected the folder {os.path.abspath(folder)} holding '
        f'{", ".join(files)} (missing: {", ".join(missing)}). Nothing is downloaded: get {reader.filename} '
        f'({reader.url}) and extract it inside {os.path.abspath(root)} (it unpacks to {reader.base_folder}/), or '
        f'point --data_dir (config data.root) at the folder that contains {reader.base_folder}.')
  from torchvision.datasets.utils import check_integrity
  official = [name for name, md5 in files.items() if check_integrity(os.path.join(folder, name), md5)]
  if len(official) == len(files):
    logging.info('%s: official files, MD5 verified (%s)', reader.display_name, folder)
    return 'official'
  if official:
    damaged = [name for name in files if name not in official]
    raise DatasetIntegrityError(
        f'{folder}: {", ".join(damaged)} fail the MD5 check while {", ".join(official)} match the official '
        f'{reader.display_name} release: the copy is damaged; extract {reader.filename} again.')
  logging.info('%s: %s is not the official release (no MD5 matches); reading it as a CIFAR-format folder',
               reader.display_name, folder)
  return 'custom'


def load_cifar(root, dataset, train):
  """(images uint8 [N, 32, 32, 3], labels int64 [N]) of the train or test split; no download is ever attempted."""
  verify_cifar_folder(root, dataset)
  reader = cifar_reader(dataset)
  try:
    split = reader(root, train=train, download=False)
  # MemoryError: a corrupt length field in a pickle header asks for an impossible allocation
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, MemoryError) as error:
    folder = os.path.join(root, reader.base_folder)
    raise DatasetIntegrityError(f'{folder} is not a readable {reader.display_name} folder '
                                f'({type(error).__name__}: {error}); extract {reader.filename} again.') from error
  images = np.ascontiguousarray(split.data, dtype=np.uint8)
  labels = np.asarray(split.targets, dtype=np.int64)
  if len(labels) != len(images) or (labels.size and (labels.min() < 0 or labels.max() >= reader.num_classes)):
    raise DatasetIntegrityError(f'{os.path.join(root, reader.base_folder)}: {len(images)} images, {len(labels)} '
                                f'labels, label range must be 0..{reader.num_classes - 1}.')
  return images, labels


@register_dataset('moons')
def load_moons(config, train=True):
  """The toy's inter-twinning moons (positions float64 [N, 2], labels int64 [N]); one split, used for both."""
  del train
  from toy import data as toy_data  # imported here: only the toy needs it
  positions, labels = toy_data.moons_dataset(subset=config.data.get('subset', 'all'))
  return np.asarray(positions), np.asarray(labels, dtype=np.int64)


DIGITS_TEST_FRACTION = 0.2  # per class, round(0.2 * class size) test images: 1 438 train / 359 test in all
DIGITS_SPLIT_SEED = 0


def digits_split_indices(labels, test_fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED):
  """(train, test) indices of a stratified split: each class shuffled by a fixed NumPy generator, its head is test."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    num_test = int(round(test_fraction * len(members)))
    test.append(members[:num_test])
    train.append(members[num_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@register_dataset('digits')
def load_digits(config=None, train=True):
  """scikit-learn's handwritten digits: uint8 [N, 8, 8, 1] (values 0..16 -> round(v * 255 / 16)), int64 labels 0..9."""
  del config
  from sklearn.datasets import load_digits as sklearn_digits  # ships inside the wheel: no download
  digits = sklearn_digits()
  images = np.round(digits.images * (255. / 16.)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train_index, test_index = digits_split_indices(labels)
  index = train_index if train else test_index
  return images[index], labels[index]


def _cifar_loader(dataset):
  return lambda config, train=True: load_cifar(config.data.root, dataset, train)


for _name in CIFAR_NAMES:
  register_dataset(_name)(_cifar_loader(_name))


def load_split(config, split='train'):
  """(data, labels) of `split` ('train' or 'test') of config.data.dataset, through the registry."""
  name = config.data.dataset
  if name not in DATASETS:
    raise ValueError(f'config.data.dataset={name!r} is not a known data set; known: {", ".join(sorted(DATASETS))}')
  if split not in ('train', 'test'):
    raise ValueError(f'split must be train or test, got {split!r}')
  return DATASETS[name](config, train=(split == 'train'))


def get_data_scaler(config):
  """[0, 1] -> model input: 2x - 1 when data.centered, else the identity, as the original."""
  if config.data.centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(config):
  """Inverse of get_data_scaler."""
  if config.data.centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


def check_channels(config, images):
  """A one-line error when the images' channel count is not config.data.num_channels."""
  if images.shape[-1] != config.data.num_channels:
    raise ValueError(f'{config.data.dataset} images have {images.shape[-1]} channel(s) but config.data.num_channels '
                     f'is {config.data.num_channels}')


class ImageBatches(torch.utils.data.Dataset):
  """uint8 NHWC images indexed by a tensor of indices -> float32 NCHW batches in [0, 1], optionally flipped."""

  def __init__(self, images, labels, image_size=32, random_flip=False, uniform_dequantization=False, seed=0):
    self.images = torch.from_numpy(np.ascontiguousarray(images))
    self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    self.image_size = image_size
    self.random_flip = random_flip
    self.uniform_dequantization = uniform_dequantization
    self.generator = torch.Generator().manual_seed(seed)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, indices):
    x = self.images[indices].permute(0, 3, 1, 2).float()
    if self.uniform_dequantization:
      x = (x + torch.rand(x.shape, generator=self.generator)) / 256.
    else:
      x = x / 255.
    if x.shape[-1] != self.image_size:
      x = F.interpolate(x, size=(self.image_size, self.image_size), mode='bilinear', antialias=True,
                        align_corners=False)
    if self.random_flip:
      flip = torch.rand(x.shape[0], generator=self.generator) < 0.5
      x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous(), self.labels[indices]


class PointBatches(torch.utils.data.Dataset):
  """Points [N, d] indexed by a tensor of indices -> float32 batches (the moons)."""

  def __init__(self, points, labels):
    self.points = torch.as_tensor(points).float()
    self.labels = torch.as_tensor(labels, dtype=torch.int64)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, indices):
    return self.points[indices], self.labels[indices]


class EpochBatches(torch.utils.data.Sampler):
  """Index tensors of one epoch's full batches (seeded shuffle); with several ranks, this rank's equal share of each.

  Every rank draws the same permutation (same seed), so the global batch does not depend on the number of ranks.
  """

  def __init__(self, num_examples, batch_size, shuffle=True, seed=0, rank=0, world_size=1):
    self.num_examples, self.batch_size, self.shuffle = num_examples, batch_size, shuffle
    self.rank, self.per_rank = rank, batch_size // world_size
    self.generator = torch.Generator().manual_seed(seed)

  def __len__(self):
    return self.num_examples // self.batch_size

  def __iter__(self):
    order = (torch.randperm(self.num_examples, generator=self.generator) if self.shuffle
             else torch.arange(self.num_examples))
    for start in range(0, len(self) * self.batch_size, self.batch_size):
      first = start + self.rank * self.per_rank
      yield order[first:first + self.per_rank]


class Batches:
  """Iterable over (x, labels) batches; `repeat=True` makes it endless (reshuffled every epoch)."""

  def __init__(self, loader, repeat):
    self.loader, self.repeat = loader, repeat

  def __len__(self):
    return len(self.loader)

  def __iter__(self):
    while True:
      yield from self.loader
      if not self.repeat:
        return


def get_dataset(config, split='train', *, batch_size=None, repeat=True, shuffle=True, seed=0, rank=0, world_size=1):
  """Batches of `split` ('train' or 'test'); see `Batches`. The moons have one split, used for both.

  repeat=True: endless, with the training options (data.random_flip, as the original's eval batches too, B34);
  repeat=False: one pass over the images as stored (no flips), the classifier accuracy's.

  `batch_size` (default training.batch_size) is the GLOBAL batch: with `world_size` processes each rank receives its
  1/world_size share of every global batch (same seed on every rank), so the data seen per update does not depend on
  the number of processes. Incomplete last batches are dropped, as the original's pipeline.
  """
  batch_size = batch_size or config.training.batch_size
  if batch_size % world_size:
    raise ValueError(f'The batch size {batch_size} must be divisible by the number of processes ({world_size}).')
  data, labels = load_split(config, split)
  if data.ndim == 2:  # points (the moons)
    dataset = PointBatches(data, labels)
  else:
    check_channels(config, data)
    flip = config.data.random_flip and repeat
    dataset = ImageBatches(data, labels, config.data.image_size, flip, config.data.uniform_dequantization,
                           seed=seed + 7919 * (rank + 1))
  if len(dataset) < batch_size:
    field = 'training.batch_size' if batch_size == config.training.batch_size else 'eval.batch_size'
    raise ValueError(f'{field}={batch_size}: the {split} split of {config.data.dataset} has only {len(dataset)} '
                     f'examples, fewer than one batch; lower {field}.')
  sampler = EpochBatches(len(dataset), batch_size, shuffle, seed, rank, world_size)
  loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)
  return Batches(loader, repeat)
