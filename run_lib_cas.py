"""Classification accuracy score (CAS): a classifier trained only on generated samples, tested on the real test split.

    python run_lib_cas.py --config configs/eval/cifar10/eval_cifar10_configs_cas.py --workdir <run> \
        [--samples_dir results/<run>/eval_samples] [--data_dir data]

Samples are read from <samples_dir>/<class>/samples_<r>.npz on every run (no cached dataset, B10-B12); all of them
are used for training and the real test split of config.data.dataset (through the data set registry) for testing.
The network is eval.cas_arch: the paper's ResNet-50 on CIFAR, the reference CNN ('digits_cnn') on digits. The test accuracy is measured every
training.eval_freq steps and after the last one; the final and the best accuracy are reported (B13). Only the newest
eval.cas_keep_checkpoints checkpoints plus the best weights are kept in results/<workdir>/checkpoints_cas, and an
interrupted run resumes from the newest one. TensorBoard tags as the original (loss_ce, eval_acc in percent), in
results/<workdir>/tensorboard_cas: the classifier run's own tensorboard/ folder is left alone.
"""

import functools
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from absl import flags
from tqdm import tqdm

import config_checks
import datasets
import evaluation
import losses
import plumbing
import run_lib
from models import cas
from models import checkpoint as ckpt
from models import utils as mutils

FLAGS = flags.FLAGS


def define_flags():
  plumbing.define_run_flags('CAS config file.', data_dir=True)
  flags.DEFINE_string('samples_dir', None, 'Folder of <class>/samples_<r>.npz (overrides eval.samples_dir; '
                      'default results/<workdir>/eval_samples).')


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed, epoch, num_samples):
  return np.random.default_rng([seed, epoch]).permutation(num_samples)


def batch_indices(update, batch_size, num_samples, seed):
  """Sample indices of one training batch: consecutive slices of a fresh permutation per epoch (resumable)."""
  positions = np.arange(update * batch_size, (update + 1) * batch_size)
  epochs = positions // num_samples
  return np.concatenate([_epoch_permutation(seed, int(e), num_samples)[positions[epochs == e] % num_samples]
                         for e in np.unique(epochs)])


def save_progress(config, ckpt_dir, model, optimizer, step, history):
  """Checkpoint at `step`, the best weights when this accuracy is the best so far, and the accuracy history."""
  ckpt.save_checkpoint(ckpt.checkpoint_path(ckpt_dir, step), model, optimizer, step)
  ckpt.prune_checkpoints(ckpt_dir, config.eval.cas_keep_checkpoints)
  if history[-1][1] >= max(accuracy for _, accuracy in history):
    ckpt.save_weights(os.path.join(ckpt_dir, 'best.pth'), model)
  evaluation.write_json_atomic(os.path.join(ckpt_dir, 'history.json'), history)


def load_history(ckpt_dir, step):
  """Accuracies measured up to `step` by an earlier, interrupted run."""
  path = os.path.join(ckpt_dir, 'history.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [tuple(entry) for entry in json.load(f) if entry[0] <= step]


def summarize(history, samples_dir, num_samples):
  final_step, final = history[-1]
  best = max(accuracy for _, accuracy in history)
  best_step = max(step for step, accuracy in history if accuracy == best)  # the step best.pth holds
  return dict(final_accuracy=final, final_step=final_step, best_accuracy=best, best_step=best_step,
              num_train_samples=num_samples, samples_dir=samples_dir)


def train_cas(config, workdir, samples_dir):
  """Train the CAS classifier on the samples; returns the final and best test accuracy (fractions)."""
  device = mutils.get_device(config)
  num_classes = config.classifier.classes
  images, labels = evaluation.load_class_samples(samples_dir, num_classes)
  test_images, test_labels = datasets.load_split(config, 'test')
  images, labels = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
  test_images, test_labels = torch.from_numpy(test_images).to(device), torch.from_numpy(test_labels).to(device)

  torch.manual_seed(config.seed)
  model = cas.create_cas_classifier(num_classes, config.data.num_channels, config.eval.cas_arch).to(device)
  optimizer = losses.get_optimizer(config, model.parameters())
  ckpt_dir = os.path.join(workdir, 'checkpoints_cas')
  latest = ckpt.latest_checkpoint(ckpt_dir)
  start = ckpt.restore_training_state(latest, model, optimizer, device=device,
                                      config_hint=f'eval.cas_arch={config.eval.cas_arch!r}') if latest else 0
  history = load_history(ckpt_dir, start)
  logging.info('CAS: %d samples of %d classes from %s, %d test images, %s from step %d',
               len(images), num_classes, samples_dir, len(test_images), config.eval.cas_arch, start)

  writer = run_lib.tensorboard_writer(os.path.join(workdir, 'tensorboard_cas'))  # the original's tags, without TF
  model.train()
  n_iters, eval_freq = config.training.n_iters, config.training.eval_freq
  # Counted by update(), not by iterating the bar: tqdm's iterator publishes its count only when it redraws, so
  # the step lines that progress.write prints would redraw a bar still at 0.
  progress = tqdm(initial=start, total=n_iters, desc='CAS', mininterval=2)
  for step in range(start, n_iters):  # `step` updates done before this one; the original evaluates after 1, 201, …
    index = torch.from_numpy(batch_indices(step, config.training.batch_size, len(images), config.seed)).to(device)
    loss = F.cross_entropy(model(evaluation.images_to_unit_nchw(images[index])), labels[index])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    progress.update(1)
    if step % config.training.log_freq == 0:
      progress.set_postfix(loss_ce=f'{loss.item():.4f}')
      writer.add_scalar('loss_ce', loss.item(), step)
    if step % eval_freq == 0 or step == n_iters - 1:
      accuracy = evaluation.classifier_accuracy(model, test_images, test_labels, config.eval.batch_size)
      history.append((step + 1, accuracy))
      writer.add_scalar('eval_acc', 100 * history[-1][1], step)
      progress.write(f'Step {step + 1}: loss_ce {loss.item():.4f} || Accuracy: {100 * history[-1][1]:.2f}%')
      save_progress(config, ckpt_dir, model, optimizer, step + 1, history)
  progress.close()
  writer.close()
  if not history:
    raise ValueError(f'nothing to do: training.n_iters={n_iters} updates are already done in {ckpt_dir}')
  return summarize(history, samples_dir, len(images))


def main(argv):
  del argv
  config = FLAGS.config
  plumbing.apply_flag_overrides(config, {'eval.samples_dir': FLAGS.samples_dir, 'data.root': FLAGS.data_dir})
  config_checks.check_cas(config)
  workdir = os.path.join('results', FLAGS.workdir)
  samples_dir = config.eval.samples_dir or os.path.join(workdir, 'eval_samples')
  if not os.path.isdir(samples_dir):
    raise FileNotFoundError(f'{samples_dir} does not exist {plumbing.relative_to_here()}: sample first '
                            f'(run_lib_sampling.py --workdir {FLAGS.workdir}) or pass --samples_dir')
  with plumbing.RunFolderLock(workdir):
    try:
      result = train_cas(config, workdir, samples_dir)
    except KeyboardInterrupt:
      raise plumbing.interruption_resuming_from(os.path.join(workdir, 'checkpoints_cas')) from None
  print(f"CAS final accuracy: {100 * result['final_accuracy']:.2f}% (step {result['final_step']}) || "
        f"best: {100 * result['best_accuracy']:.2f}% (step {result['best_step']})")
  evaluation.update_metrics_file(workdir, 'cas', result)


if __name__ == '__main__':
  define_flags()
  plumbing.run_script(main)
