"""datasets.py: the registry, the digits split, local CIFAR folders (MD5 policy, clear errors), batching, seeding."""
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
  reader = datasets.cifar_reader('CIFAR10')
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


def test_moons_come_from_toy_data():
  from toy import data as toy_data
  positions, labels = toy_data.moons_dataset()
  config = data_config('unused', dataset='moons', batch_size=100)
  x, y = next(iter(datasets.get_dataset(config, 'train', shuffle=False)))
  assert x.dtype == torch.float32 and x.shape == (100, 2) and y.dtype == torch.int64
  assert torch.equal(x, torch.as_tensor(np.asarray(positions[:100])).float())
  assert torch.equal(y, torch.as_tensor(np.asarray(labels[:100])).long())



# ------------------------------------------------------------------------------------------------
# The registry and the digits


def digits_config(batch_size=8):
  config = data_config('unused', dataset='digits', batch_size=batch_size)
  config.data.update(image_size=8, num_channels=1)
  return config


def test_digits_splits_sizes_dtypes_labels_and_scaling():
  from sklearn.datasets import load_digits
  raw = load_digits()
  train_images, train_labels = datasets.load_split(digits_config(), 'train')
  test_images, test_labels = datasets.load_split(digits_config(), 'test')
  assert train_images.shape == (1438, 8, 8, 1) and test_images.shape == (359, 8, 8, 1)
  assert train_images.dtype == test_images.dtype == np.uint8
  assert train_labels.dtype == test_labels.dtype == np.int64
  assert set(train_labels.tolist()) == set(test_labels.tolist()) == set(range(10))
  train_index, test_index = datasets.digits_split_indices(raw.target)
  assert len(np.intersect1d(train_index, test_index)) == 0 and len(train_index) + len(test_index) == 1797
  np.testing.assert_array_equal(test_images[..., 0], np.round(raw.images[test_index] * 255 / 16).astype(np.uint8))
  np.testing.assert_array_equal(train_labels, raw.target[train_index])
  assert train_images.max() == 255 and train_images.min() == 0


def test_digits_split_is_stratified_and_deterministic():
  _, train_labels = datasets.load_split(digits_config(), 'train')
  _, test_labels = datasets.load_split(digits_config(), 'test')
  fraction = np.bincount(test_labels) / (np.bincount(test_labels) + np.bincount(train_labels))
  assert np.all(np.abs(fraction - 0.2) < 0.01)
  again = datasets.load_split(digits_config(), 'test')
  np.testing.assert_array_equal(again[1], test_labels)
  other_seed = datasets.digits_split_indices(np.concatenate([train_labels, test_labels]), seed=1)[1]
  assert not np.array_equal(other_seed, datasets.digits_split_indices(
      np.concatenate([train_labels, test_labels]))[1])


def test_digits_batches_are_one_channel_8x8():
  x, labels = next(iter(datasets.get_dataset(digits_config(batch_size=16), 'train', shuffle=False)))
  images, expected = datasets.load_split(digits_config(), 'train')
  assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32
  assert torch.equal(x, torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float() / 255.)
  assert torch.equal(labels, torch.from_numpy(expected[:16]))


def test_channel_mismatch_is_a_clear_error():
  config = digits_config()
  config.data.num_channels = 3
  with pytest.raises(ValueError, match='1 channel.*num_channels is 3'):
    datasets.get_dataset(config, 'train')


def test_cifar_through_the_registry_equals_the_reader(cifar10):
  root, written = cifar10
  for split in ('train', 'test'):
    images, labels = datasets.load_split(data_config(root), split)
    np.testing.assert_array_equal(images, written[split][0])
    np.testing.assert_array_equal(labels, written[split][1])


def test_unknown_dataset_names_the_known_ones():
  with pytest.raises(ValueError, match="'svhn' is not a known data set; known: CIFAR10, CIFAR100, digits, moons"):
    datasets.load_split(data_config('unused', dataset='svhn'), 'train')


def test_unknown_dataset_on_the_command_line_is_one_line(tmp_path):
  import subprocess
  import sys
  from tests.helpers import REPO_ROOT
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'main.py'), '--config', str(REPO_ROOT / 'configs/digits/score.py'),
       '--model', 'score', '--workdir', 'x', '--config.data.dataset=svhn', '--config.device=cpu'],
      cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert "'svhn' is not a known data set; known: CIFAR10, CIFAR100, digits, moons" in result.stderr
