"""Writes small CIFAR-format folders (the python pickles of cifar-10-batches-py / cifar-100-python) for tests."""
import os
import pickle

import numpy as np

LAYOUT = {
    'CIFAR10': dict(folder='cifar-10-batches-py', train=[f'data_batch_{i}' for i in range(1, 6)], test='test_batch',
                    meta='batches.meta', meta_key='label_names', label_key='labels', classes=10),
    'CIFAR100': dict(folder='cifar-100-python', train=['train'], test='test', meta='meta',
                     meta_key='fine_label_names', label_key='fine_labels', classes=100),
}


def make_split(num, num_classes, seed):
  """(images uint8 [num, 32, 32, 3], labels int64 [num]) with every class present when num allows."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(num) % num_classes)[rng.permutation(num)].astype(np.int64)
  return images, labels


def _write_batch(path, images, labels, label_key):
  entry = {'batch_label': 'test batch', label_key: [int(v) for v in labels],
           'data': images.transpose(0, 3, 1, 2).reshape(len(images), -1),
           'filenames': [f'image_{i}.png' for i in range(len(images))]}
  if label_key == 'fine_labels':
    entry['coarse_labels'] = [int(v) // 5 for v in labels]
  with open(path, 'wb') as file:
    pickle.dump(entry, file, protocol=2)


def write_cifar_folder(root, dataset='CIFAR10', num_train=100, num_test=40, seed=0):
  """Write <root>/<cifar folder>; returns {'train': (images, labels), 'test': (images, labels)} as written."""
  layout = LAYOUT[dataset]
  folder = os.path.join(root, layout['folder'])
  os.makedirs(folder, exist_ok=True)
  train = make_split(num_train, layout['classes'], seed)
  test = make_split(num_test, layout['classes'], seed + 1)
  chunks = np.array_split(np.arange(num_train), len(layout['train']))
  for name, index in zip(layout['train'], chunks):
    _write_batch(os.path.join(folder, name), train[0][index], train[1][index], layout['label_key'])
  _write_batch(os.path.join(folder, layout['test']), *test, layout['label_key'])
  with open(os.path.join(folder, layout['meta']), 'wb') as file:
    pickle.dump({layout['meta_key']: [f'class_{i}' for i in range(layout['classes'])]}, file, protocol=2)
  return {'train': train, 'test': test}
