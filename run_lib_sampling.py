"""Class-conditional sampling: a score model guided by a noise-conditioned classifier (score + λ ∇x log p(y|x)).

  python run_lib_sampling.py --config configs/eval/cifar10/eval_cifar10_configs.py --mode full \
      --workdir classifier_cifar10_ours_resnet18_cond [--scale 10] \
      [--restore <score checkpoint> --restore_classifier <classifier checkpoint>]
  python run_lib_sampling.py ... --mode class --classid 5 --classidend 7     # classes 5 and 6 (end exclusive)
  torchrun --nproc_per_node=K run_lib_sampling.py ...                         # ranks share the work list

Writes results/<workdir>/eval_samples/<class>/samples_<round>.npz (key 'samples', uint8 NHWC; key 'nfe', the network
evaluations that made them) and a .png grid per round. Every (class, round) has its own seed derived from
(sampling.seed, class, round): a rerun skips complete files and redoes broken ones, and any split of the classes
over processes writes the same files.

eval_samples/settings.json records what made the samples (the whole config.sampling section, the SDE and its table
size, batch size, data scaling, and the identities of both checkpoints). A rerun with other settings is refused with
the differing fields named; --fresh moves the old samples aside (eval_samples.<time>) and starts again. A batch with
a non-finite value is never written: the run stops, naming the class, the round and the settings.
"""
import datetime
import json
import logging
import os
import zipfile
import zlib

import numpy as np
import torch
from absl import flags

import config_checks
import fileio
import plumbing

FLAGS = flags.FLAGS
SETTINGS_FILE = 'settings.json'


def define_flags():
  """The original's flags plus --fresh (defined when run as a script, so importing this module defines none)."""
  plumbing.define_run_flags('Sampling configuration file (configs/eval/...); samples go to '
                            'results/<workdir>/eval_samples.')
  flags.DEFINE_enum('mode', 'full', ['full', 'class'], 'full: every class; class: --classid .. --classidend.')
  flags.DEFINE_integer('classid', 0, 'First class (class mode).')
  flags.DEFINE_integer('classidend', -1, 'End of the class range, EXCLUSIVE; -1 means only --classid.')
  flags.DEFINE_float('scale', None, 'Guidance scale λ; overrides sampling.scaling_factor only when given (the '
                     'original always overwrote it, with 1.0 when --scale was absent).')
  flags.DEFINE_string('restore', None, 'Score checkpoint; overrides model.score_restore_path only when given.')
  flags.DEFINE_string('restore_classifier', None,
                      'Classifier checkpoint; overrides model.classifier_restore_path only when given.')
  flags.DEFINE_bool('fresh', False, 'Move samples made with other settings aside (eval_samples.<time>) and start '
                    'again, instead of refusing.')


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


def write_npz(file, **arrays):
  """np.savez_compressed with fixed zip timestamps, so equal arrays give byte-identical files."""
  with zipfile.ZipFile(file, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for name, array in arrays.items():
      info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      with archive.open(info, 'w', force_zip64=True) as member:
        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_samples(path, samples, nfe):
  """The PNG grid (nrow = int(sqrt(B)), padding 2) first, then the npz that marks the batch complete: 'samples' and
  'nfe', the network evaluations that made them."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nrow = int(np.sqrt(samples.shape[0]))
  fileio.atomic_write(path[:-len('.npz')] + '.png', lambda file: fileio.save_png_grid(samples, file, nrow))
  fileio.atomic_write(path, lambda file: write_npz(file, samples=fileio.to_uint8(samples), nfe=np.int64(nfe)))


def pending_work(sample_dir, classes, rounds, shape, rank=0, world_size=1, redo_all=False):
  """This rank's share of the (class, round) pairs whose npz is not complete yet (all of them with `redo_all`)."""
  work = [(c, r) for c in classes for r in range(rounds)][rank::world_size]
  return [(c, r) for c, r in work if redo_all or not is_complete(samples_path(sample_dir, c, r), shape)]


# ---------------------------------------------------------------------------------------------- settings record


def sampling_settings(config):
  """{field: value} of everything that shapes the samples; checkpoints by content (models.checkpoint fingerprints)."""
  from models import checkpoint
  score_path, classifier_path = plumbing.checkpoint_paths(config)
  settings = {f'sampling.{key}': value for key, value in config.sampling.to_dict().items()}
  for field in ('training.sde', 'training.continuous', 'training.batch_size', 'model.num_scales', 'model.sigma_min',
                'model.sigma_max', 'model.beta_min', 'model.beta_max', 'data.image_size', 'data.num_channels',
                'data.centered'):
    section, name = field.split('.')
    settings[field] = config[section][name]
  settings['score checkpoint'] = checkpoint.checkpoint_fingerprint(score_path)
  settings['classifier checkpoint'] = checkpoint.checkpoint_fingerprint(classifier_path)
  return json.loads(json.dumps(settings))  # tuples as lists, as read back from the file


def has_samples(sample_dir):
  return os.path.isdir(sample_dir) and any(name.endswith('.npz') for _, _, names in os.walk(sample_dir)
                                           for name in names)


def differences(recorded, settings):
  return [f'{key} {recorded.get(key, "unset")!r} -> {settings.get(key, "unset")!r}'
          for key in sorted(set(recorded) | set(settings)) if recorded.get(key) != settings.get(key)]


def settings_changes(sample_dir, settings, fresh):
  """How the folder's samples differ from `settings` ([] when they match or there are none yet); refused unless
  --fresh. Reads only: nothing is moved or recorded before the models and the sampler are ready."""
  recorded = read_settings(os.path.join(sample_dir, SETTINGS_FILE))
  if recorded is None and has_samples(sample_dir):
    changes = ['no settings record (samples of an earlier version)']
  else:
    changes = differences(recorded, settings) if recorded is not None else []
  if changes and not fresh:
    raise plumbing.ScriptError(f'{sample_dir} holds samples made with other settings ({"; ".join(changes)}); '
                               'sample into another --workdir, or pass --fresh to move them aside and start again')
  return changes


def record_settings(sample_dir, settings, changes, rank):
  """Rank 0: move samples made with other settings aside (--fresh) and record `settings` in settings.json."""
  if rank != 0:
    return
  if changes:
    aside = f'{sample_dir}.{datetime.datetime.now().strftime("%Y%m%d-%H%M%S")}'
    os.replace(sample_dir, aside)
    logging.warning('Moved the samples made with other settings to %s', aside)
  path = os.path.join(sample_dir, SETTINGS_FILE)
  if changes or not os.path.isfile(path):
    fileio.write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + '\n')


def read_settings(path):
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as file:
      return json.load(file)
  except ValueError as error:
    raise plumbing.ScriptError(f'{path} is not a readable settings record ({error}); pass --fresh to start '
                               'again') from error


def describe(config):
  """The SDE, the sampler (method, grid, steps, options such as η, NFE), the guidance scale and the precision."""
  import sampling
  import sde_lib
  s = config.sampling
  sde, eps = sde_lib.get_sde(config)
  sampler = sampling.get_sampling_fn(config, sde, (1, 1), lambda x: x, eps).description
  return (f'{config.training.sde} N={config.model.num_scales}, {sampler}, scale {s.scaling_factor:g}, {s.dtype}'
          f'{", compiled" if s.compile else ""}')


def prepare(config, workdir, classes, fresh=False):
  """Check the folder's settings; returns this process's pending (class, round) list, R, and fn(class, round).

  settings.json is written (and --fresh moves old samples aside) only once the models have loaded and the sampler
  is built, so a start that fails on a checkpoint or a sampler setting never blocks the corrected command."""
  rank, world_size, _ = plumbing.torchrun_rank()
  device = plumbing.process_device(config, deterministic=True)
  rounds = rounds_per_class(config)
  batch_size, channels, size = config.training.batch_size, config.data.num_channels, config.data.image_size
  sample_dir = os.path.join(workdir, 'eval_samples')
  settings = sampling_settings(config)
  changes = settings_changes(sample_dir, settings, fresh)
  work = pending_work(sample_dir, classes, rounds, (batch_size, size, size, channels), rank, world_size,
                      redo_all=bool(changes))
  logging.info('rank %d of %d on %s: %d batches of %d left to sample for classes %d..%d (%d rounds each; %s)',
               rank, world_size, device, len(work), batch_size, classes[0], classes[-1], rounds, describe(config))
  if not work:
    return work, rounds, None
  sample_batch = batch_sampler(config, device, sample_dir)
  record_settings(sample_dir, settings, changes, rank)
  fileio.remove_stale_temp_files(sample_dir)
  return work, rounds, sample_batch


def batch_sampler(config, device, sample_dir):
  """fn(class, round) that samples one batch with its own seed and writes it; builds the sampler, loads the models."""
  import datasets
  import sampling
  import sde_lib
  from models import checkpoint
  batch_size = config.training.batch_size
  sde, eps = sde_lib.get_sde(config)
  shape = (batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
  sampling_fn = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), eps)
  score_model, classifier = checkpoint.load_guidance_models(config, *plumbing.checkpoint_paths(config), device,
                                                            channels_last=True)

  def sample_batch(class_id, round_id):
    torch.manual_seed(sample_seed(config.sampling.seed, class_id, round_id))
    labels = torch.full((batch_size,), class_id, dtype=torch.long, device=device)
    samples, nfe = sampling_fn(score_model, classifier, labels)
    if not torch.isfinite(samples).all():
      raise plumbing.ScriptError(f'class {class_id} round {round_id}: the sampler returned non-finite values '
                                 f'({describe(config)}); nothing was written for this batch')
    write_samples(samples_path(sample_dir, class_id, round_id), samples, nfe)
  return sample_batch


def sample(config, workdir, classes, fresh=False):
  """Sample every pending (class, round) of this process into workdir/eval_samples, holding the folder's lock."""
  from tqdm import tqdm
  rank = plumbing.torchrun_rank()[0]
  with plumbing.lock_run_folder(workdir, rank):
    work, rounds, sample_batch = prepare(config, workdir, classes, fresh)
    progress = tqdm(work, desc=f'sampling (rank {rank})', unit='batch', dynamic_ncols=True)
    try:
      for class_id, round_id in progress:
        progress.set_postfix_str(f'class {class_id} round {round_id + 1}/{rounds}')
        sample_batch(class_id, round_id)
    except KeyboardInterrupt:
      raise plumbing.Interrupted('rerun the same command to resume: the complete sample files are kept') from None


def main(argv):
  del argv
  config = FLAGS.config
  plumbing.apply_flag_overrides(config, {  # B2: the config's paths stay in force when a flag is absent
      'sampling.scaling_factor': FLAGS.scale, 'model.score_restore_path': FLAGS.restore,
      'model.classifier_restore_path': FLAGS.restore_classifier})
  config_checks.check_sampling(config)
  classes = class_range(FLAGS.mode, FLAGS.classid, FLAGS.classidend, config.classifier.classes)
  rounds_per_class(config)
  plumbing.checkpoint_paths(config)
  sample(config, os.path.join('results', FLAGS.workdir), classes, FLAGS.fresh)


if __name__ == '__main__':
  define_flags()
  plumbing.run_script(main)
