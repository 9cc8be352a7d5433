"""datasets.py: local CIFAR folders (no download, MD5 policy, clear errors), batching, flips, seeding, scalers."""
import hashlib
import os

import ml_collections
import numpy as np
import pytest
import torch
import torchvision

import datasets
from tests.cifar_fixture import LAYOUT, write_cifar_folder


def data_config(root, dataset='CIFAR10', batch_size=8, random_flip=False, dequantize=False, centered=False):
  return ml_collections.ConfigDict({
      'training': {'batch_size': batch_size},
      'data': {'dataset': dataset, 'root': str(root), 'image_size': 32, 'num_channels': 3, 'random_flip': random_flip,
               'centered': centered, 'uniform_dequantization': dequantize}})


def first_batches(batches, count):
  iterator = iter(batches)
  return [next(iterator) for _ in range(count)]


@pytest.fixture
def cifar10(tmp_path):
  return tmp_path, write_cifar_folder(tmp_path, 'CIFAR10', num_train=50, num_test=20)


@pytest.mark.parametrize('dataset', ['CIFAR10', 'CIFAR100'])
def test_load_cifar_reads_the_written_folder(tmp_path, dataset):
  written = write_cifar_folder(tmp_path, dataset, num_train=30, num_test=12)
  for split in ('train', 'test'):
    images, labels = datasets.load_cifar(str(tmp_path), dataset, train=(split == 'train'))
    assert images.dtype == np.uint8 and images.shape == written[split][0].shape
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, written[split][0])
    np.testing.assert_array_equal(labels, written[split][1])


def test_torchvision_alone_refuses_a_test_folder(cifar10):
  """Why datasets.py replaces torchvision's MD5 check: the stock reader rejects any non-official folder."""
  root, _ = cifar10
  with pytest.raises(RuntimeError):
    torchvision.datasets.CIFAR10(str(root), train=True, download=False)


@pytest.mark.parametrize('dataset,folder,archive', [('CIFAR10', 'cifar-10-batches-py', 'cifar-10-python.tar.gz'),
                                                    ('CIFAR100', 'cifar-100-python', 'cifar-100-python.tar.gz')])
def test_missing_folder_names_folder_and_archive(tmp_path, dataset, folder, archive):
  with pytest.raises(datasets.DatasetNotFoundError) as error:
    datasets.load_cifar(str(tmp_path / 'nowhere'), dataset, train=True)
  message = str(error.value)
  assert folder in message and archive in message and '--data_dir' in message


def test_incomplete_folder_names_the_missing_file(cifar10):
  root, _ = cifar10
  os.remove(os.path.join(root, 'cifar-10-batches-py', 'data_batch_3'))
  with pytest.raises(datasets.DatasetNotFoundError, match='missing: data_batch_3'):
    datasets.load_cifar(str(root), 'CIFAR10', train=False)


def test_no_download_is_attempted(cifar10, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('download attempted')
  monkeypatch.setattr(torchvision.datasets.CIFAR10, 'download', refuse)
  root, _ = cifar10
  datasets.load_cifar(str(root), 'CIFAR10', train=True)
  with pytest.raises(datasets.DatasetNotFoundError):
    datasets.load_cifar(str(root / 'empty'), 'CIFAR10', train=True)


def md5_of(path):
  return hashlib.md5(open(path, 'rb').read()).hexdigest()


def pretend_official(monkeypatch, root, names):
  """Make `names` of the written folder carry the 'official' MD5 (as if they came from the real archive)."""
  folder = os.path.join(root, 'cifar-10-batches-py')
  reader = datasets.LocalCIFAR10
  official = {name: md5_of(os.path.join(folder, name)) for name in names}
  monkeypatch.setattr(reader, 'train_list', [[n, official.get(n, m)] for n, m in reader.train_list])
  monkeypatch.setattr(reader, 'test_list', [[n, official.get(n, m)] for n, m in reader.test_list])
  monkeypatch.setattr(reader, 'meta', dict(reader.meta, md5=official.get('batches.meta', reader.meta['md5'])))


def test_md5_policy_official_custom_damaged(cifar10, monkeypatch):
  root, _ = cifar10
  assert datasets.verify_cifar_folder(str(root), 'CIFAR10') == 'custom'
  every_file = LAYOUT['CIFAR10']['train'] + ['test_batch', 'batches.meta']
  pretend_official(monkeypatch, root, every_file)
  assert datasets.verify_cifar_folder(str(root), 'CIFAR10') == 'official'
  with open(os.path.join(root, 'cifar-10-batches-py', 'data_batch_2'), 'r+b') as file:
    file.seek(200)
    file.write(b'\x00\x01\x02')  # one damaged file in an otherwise official folder
  with pytest.raises(datasets.DatasetIntegrityError, match='data_batch_2'):
    datasets.load_cifar(str(root), 'CIFAR10', train=True)


def test_unreadable_batch_is_a_clear_error(cifar10):
  root, _ = cifar10
  with open(os.path.join(root, 'cifar-10-batches-py', 'test_batch'), 'wb') as file:
    file.write(b'not a pickle')
  with pytest.raises(datasets.DatasetIntegrityError, match='not a readable CIFAR-10 folder'):
    datasets.load_cifar(str(root), 'CIFAR10', train=False)


def test_batches_are_float_nchw_in_unit_range_drop_remainder(cifar10):
  root, written = cifar10
  batches = datasets.get_dataset(data_config(root, batch_size=8), 'test', repeat=False, shuffle=False)
  out = list(batches)
  assert len(out) == 20 // 8
  x, labels = out[0]
  assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
  expected = torch.from_numpy(written['test'][0][:8]).permute(0, 3, 1, 2).float() / 255.
  assert torch.equal(x, expected)
  assert torch.equal(labels, torch.from_numpy(written['test'][1][:8]))


def test_repeat_reshuffles_and_seed_fixes_the_order(cifar10):
  root, _ = cifar10
  config = data_config(root, batch_size=10)
  a = first_batches(datasets.get_dataset(config, 'train', seed=3), 12)
  b = first_batches(datasets.get_dataset(config, 'train', seed=3), 12)
  c = first_batches(datasets.get_dataset(config, 'train', seed=4), 12)
  assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
  assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
  epoch_1 = torch.cat([labels for _, labels in a[:5]])
  epoch_2 = torch.cat([labels for _, labels in a[5:10]])
  assert sorted(epoch_1.tolist()) == sorted(epoch_2.tolist())  # each epoch is a permutation of the split
  assert not torch.equal(epoch_1, epoch_2)


def test_random_flip_is_horizontal_and_seeded(cifar10):
  root, written = cifar10
  config = data_config(root, batch_size=20, random_flip=True)
  x, _ = next(iter(datasets.get_dataset(config, 'test', shuffle=False, seed=1)))
  original = torch.from_numpy(written['test'][0]).permute(0, 3, 1, 2).float() / 255.
  flipped = [torch.equal(x[i], original[i].flip(-1)) for i in range(20)]
  kept = [torch.equal(x[i], original[i]) for i in range(20)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
  again, _ = next(iter(datasets.get_dataset(config, 'test', shuffle=False, seed=1)))
  assert torch.equal(x, again)


def test_uniform_dequantization(cifar10):
  root, written = cifar10
  config = data_config(root, batch_size=20, dequantize=True)
  x, _ = next(iter(datasets.get_dataset(config, 'test', shuffle=False)))
  levels = torch.from_numpy(written['test'][0]).permute(0, 3, 1, 2).float()
  assert torch.all(x * 256 >= levels) and torch.all(x * 256 < levels + 1)
  assert not torch.equal(x * 256, levels)


def test_ranks_split_the_global_batch(cifar10):
  root, _ = cifar10
  config = data_config(root, batch_size=10)
  whole = first_batches(datasets.get_dataset(config, 'train', seed=5), 3)
  parts = [first_batches(datasets.get_dataset(config, 'train', seed=5, rank=r, world_size=2), 3) for r in (0, 1)]
  for i in range(3):
    assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), whole[i][0])
  with pytest.raises(ValueError, match='divisible'):
    datasets.get_dataset(data_config(root, batch_size=9), 'train', world_size=2)


def test_batch_larger_than_split_is_an_error(cifar10):
  root, _ = cifar10
  with pytest.raises(ValueError, match='fewer than one batch'):
    datasets.get_dataset(data_config(root, batch_size=64), 'test')


def test_scalers_are_inverse():
  x = torch.rand(2, 3, 4, 4)
  for centered in (False, True):
    config = data_config('unused', centered=centered)
    scaled = datasets.get_data_scaler(config)(x)
    assert torch.allclose(datasets.get_data_inverse_scaler(config)(scaled), x)
    assert torch.equal(scaled, x * 2 - 1) if centered else torch.equal(scaled, x)


def test_moons_come_from_toy_lib():
  import toy_lib
  positions, labels = toy_lib.moons_dataset()
  config = data_config('unused', dataset='moons', batch_size=100)
  x, y = next(iter(datasets.get_dataset(config, 'train', shuffle=False)))
  assert x.dtype == torch.float32 and x.shape == (100, 2) and y.dtype == torch.int64
  assert torch.equal(x, torch.as_tensor(np.asarray(positions[:100])).float())
  assert torch.equal(y, torch.as_tensor(np.asarray(labels[:100])).long())

