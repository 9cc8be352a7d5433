"""Class-conditional sampling: a score model guided by a noise-conditioned classifier (spec §3).

  python run_lib_sampling.py --config configs/eval/cifar10/eval_cifar10_configs.py --mode full \
      --workdir classifier_cifar10_ours_resnet18_cond [--scale 10] \
      [--restore <score checkpoint> --restore_classifier <classifier checkpoint>]
  python run_lib_sampling.py ... --mode class --classid 5 --classidend 7     # classes 5 and 6 (end exclusive)
  torchrun --nproc_per_node=K run_lib_sampling.py ...                         # ranks share the work list

Writes results/<workdir>/eval_samples/<class>/samples_<round>.npz (key 'samples', uint8 NHWC) and a .png grid
per round. Every (class, round) has its own seed derived from (sampling.seed, class, round): a rerun skips
complete files and redoes broken ones, and any split of the classes over processes writes the same files.
"""
import logging
import os
import sys
import zipfile
import zlib

import numpy as np
import torch
from absl import app, flags
from ml_collections.config_flags import config_flags

FLAGS = flags.FLAGS


def define_flags():
  """The seed's flags (defined when run as a script, so importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Sampling configuration file (configs/eval/...).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run folder name; samples go to results/<workdir>/eval_samples.')
  flags.DEFINE_enum('mode', 'full', ['full', 'class'], 'full: every class; class: --classid .. --classidend.')
  flags.DEFINE_integer('classid', 0, 'First class (class mode).')
  flags.DEFINE_integer('classidend', -1, 'End of the class range, EXCLUSIVE; -1 means only --classid.')
  flags.DEFINE_float('scale', None, 'Guidance scale λ; overrides sampling.scaling_factor only when given.')
  flags.DEFINE_string('restore', None, 'Score checkpoint; overrides model.score_restore_path only when given.')
  flags.DEFINE_string('restore_classifier', None,
                      'Classifier checkpoint; overrides model.classifier_restore_path only when given.')
  flags.mark_flags_as_required(['config', 'workdir'])


def class_range(mode, class_id, class_id_end, num_classes):
  """Classes to sample: all in 'full' mode, [class_id, class_id_end) in 'class' mode (−1: class_id only)."""
  if mode == 'full':
    return list(range(num_classes))
  end = class_id + 1 if class_id_end == -1 else class_id_end
  if not 0 <= class_id < end <= num_classes:
    raise ValueError(f'--classid {class_id} --classidend {class_id_end} selects no valid classes: need '
                     f'0 <= classid < classidend <= {num_classes} (classidend is exclusive; -1 means just '
                     f'classid)')
  return list(range(class_id, end))


def rounds_per_class(config):
  """R = (eval.num_samples // training.batch_size) // classes, as the original (51 for CIFAR-10)."""
  rounds = (config.eval.num_samples // config.training.batch_size) // config.classifier.classes
  if rounds < 1:
    raise ValueError(f'eval.num_samples={config.eval.num_samples} gives no full batch of '
                     f'training.batch_size={config.training.batch_size} per class '
                     f'({config.classifier.classes} classes)')
  return rounds


def sample_seed(base_seed, class_id, round_id):
  """The seed of one (class, round) batch: independent of which process samples it."""
  return int(np.random.SeedSequence([base_seed, class_id, round_id]).generate_state(1)[0])


def to_uint8(samples):
  """NCHW floats in [0, 1] -> NHWC uint8 by clip(x·255, 0, 255) and truncation (the original's quantisation)."""
  return np.clip(samples.permute(0, 2, 3, 1).cpu().numpy() * 255., 0, 255).astype(np.uint8)


def samples_path(sample_dir, class_id, round_id):
  return os.path.join(sample_dir, str(class_id), f'samples_{round_id}.npz')


def is_complete(path, shape):
  """True if `path` is a readable npz whose 'samples' is a uint8 array of `shape`."""
  try:
    with np.load(path) as archive:
      samples = archive['samples']
    return samples.dtype == np.uint8 and samples.shape == tuple(shape)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
    return False


def _atomic_write(path, write):
  """write(file) into a temporary file next to `path`, then rename it into place."""
  folder, name = os.path.split(path)
  tmp_path = os.path.join(folder, f'.{name}.{os.getpid()}.tmp')
  try:
    with open(tmp_path, 'wb') as file:
      write(file)
    os.replace(tmp_path, path)
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)


def write_npz(file, **arrays):
  """np.savez_compressed with fixed zip timestamps, so equal arrays give byte-identical files."""
  with zipfile.ZipFile(file, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for name, array in arrays.items():
      info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      with archive.open(info, 'w', force_zip64=True) as member:
        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_samples(path, samples):
  """The PNG grid (nrow = int(sqrt(B)), padding 2) first, then the npz that marks the batch complete."""
  from torchvision.utils import save_image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nrow = int(np.sqrt(samples.shape[0]))
  _atomic_write(path[:-len('.npz')] + '.png',
                lambda file: save_image(samples.cpu(), file, nrow=nrow, padding=2, format='png'))
  _atomic_write(path, lambda file: write_npz(file, samples=to_uint8(samples)))


def process_rank():
  """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain run."""
  env = os.environ
  return int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)), int(env.get('LOCAL_RANK', 0))


def pending_work(sample_dir, classes, rounds, shape, rank=0, world_size=1):
  """This rank's share of the (class, round) pairs whose npz is not complete yet."""
  work = [(c, r) for c in classes for r in range(rounds)][rank::world_size]
  return [(c, r) for c, r in work if not is_complete(samples_path(sample_dir, c, r), shape)]


def checkpoint_paths(config):
  """(score, classifier) checkpoint paths from the config; a clear error if one is unset or missing."""
  paths = []
  for field, flag in (('score_restore_path', '--restore'), ('classifier_restore_path', '--restore_classifier')):
    path = config.model.get(field)
    if path is None:
      raise ValueError(f'No model.{field}: pass {flag} or set it in the config')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'model.{field} = {path} does not exist (set it with {flag})')
    paths.append(path)
  return paths


def load_models(config, device):
  """The EMA score model and the classifier, in eval mode on `device`, weights in channels_last."""
  import sampling
  from models import checkpoint
  from models import utils as mutils
  score_path, classifier_path = checkpoint_paths(config)
  score_model = mutils.create_model(config)
  checkpoint.restore_score_model(score_path, score_model, None, device)
  classifier = mutils.create_classifier(config)
  checkpoint.restore_classifier(classifier_path, classifier, device)
  return sampling.to_channels_last(score_model.eval(), classifier.eval())


def process_device(config, local_rank, world_size):
  """config.device, with torchrun's ranks spread over the local GPUs; written back into the config."""
  from models import utils as mutils
  device = mutils.get_device(config)
  if world_size > 1 and device.type == 'cuda' and device.index is None:
    device = torch.device('cuda', local_rank)
  if device.type == 'cuda':  # the same cuDNN algorithms in every process: shards give the same files
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
  config.device = str(device)
  return device


def prepare(config, workdir, classes):
  """Validate the job; returns this process's pending (class, round) list, R, and fn(class, round)."""
  import datasets
  import sampling
  import sde_lib
  rank, world_size, local_rank = process_rank()
  device = process_device(config, local_rank, world_size)
  rounds = rounds_per_class(config)
  checkpoint_paths(config)
  batch_size, channels, size = config.training.batch_size, config.data.num_channels, config.data.image_size
  sample_dir = os.path.join(workdir, 'eval_samples')
  work = pending_work(sample_dir, classes, rounds, (batch_size, size, size, channels), rank, world_size)
  logging.info('rank %d of %d on %s: %d batches of %d left to sample for classes %d..%d (%d rounds each; '
               'guidance scale %g, %s%s)', rank, world_size, device, len(work), batch_size, classes[0],
               classes[-1], rounds, config.sampling.scaling_factor, config.sampling.dtype,
               ', compiled' if config.sampling.compile else '')
  if not work:
    return work, rounds, None
  score_model, classifier = load_models(config, device)
  sde, eps = sde_lib.get_sde(config)
  shape = (batch_size, channels, size, size)
  sampling_fn = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), eps)

  def sample_batch(class_id, round_id):
    torch.manual_seed(sample_seed(config.sampling.seed, class_id, round_id))
    labels = torch.full((batch_size,), class_id, dtype=torch.long, device=device)
    samples, _ = sampling_fn(score_model, classifier, labels)
    write_samples(samples_path(sample_dir, class_id, round_id), samples)
  return work, rounds, sample_batch


def main(argv):
  del argv
  from tqdm import tqdm
  config = FLAGS.config
  if FLAGS.scale is not None:
    config.sampling.scaling_factor = FLAGS.scale
  if FLAGS.restore is not None:  # B2: the config's paths stay in force when a flag is absent
    config.model.score_restore_path = FLAGS.restore
  if FLAGS.restore_classifier is not None:
    config.model.classifier_restore_path = FLAGS.restore_classifier
  try:
    classes = class_range(FLAGS.mode, FLAGS.classid, FLAGS.classidend, config.classifier.classes)
    work, rounds, sample_batch = prepare(config, os.path.join('results', FLAGS.workdir), classes)
  except (FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  rank = process_rank()[0]
  progress = tqdm(work, desc=f'sampling (rank {rank})', unit='batch', dynamic_ncols=True)
  for class_id, round_id in progress:
    progress.set_postfix_str(f'class {class_id} round {round_id + 1}/{rounds}')
    sample_batch(class_id, round_id)


if __name__ == '__main__':
  define_flags()
  app.run(main)
