"""Evaluate the samples of a work directory as the paper: stat file, latents, FID/IS (or FD), PRDC.

    python run_lib_evaluation.py --config configs/eval/cifar10/eval_cifar10_configs.py --workdir <run> \
        --stat --latent --fidis --prdc --mode full --inception_dir <TF-GAN Inception folder> --data_dir data

Steps run in the original order --stat -> --latent -> --prdc -> --fidis, each only when its flag is set. Files live in
results/<workdir>: stat/stat.npz, latent/<c>/samples_<r>_latent.npz, metrics.json and metrics.txt (plus the
original's fid_is.txt / prdc.txt in class mode). --latent first deletes every latent/<c>/*_latent.npz and then encodes
every sample file again, so latents of sample files that no longer exist (e.g. moved aside by run_lib_sampling.py
--fresh) are never evaluated; the original overwrote file by file and kept such stale latents in its metrics. The latents are those of config.eval.features: TF-GAN's Inception
(CIFAR, the paper's) or the reference classifier (digits: FD instead of FID, no IS, plus the reference classifier's
accuracy on the samples; TensorFlow is not loaded).
"""

import os

import numpy as np
from absl import flags
from tqdm import tqdm

import config_checks
import datasets
import evaluation
import plumbing
from models import utils as mutils

FLAGS = flags.FLAGS


def define_flags():
  plumbing.define_run_flags('Evaluation config file.', data_dir=True)
  flags.DEFINE_enum('mode', 'full', ['full', 'class'], 'full: all samples at once; class: class-wise (CW) metrics.')
  flags.DEFINE_bool('stat', False, 'Build stat/stat.npz from the training split, grouped by class.')
  flags.DEFINE_bool('latent', False, 'Encode the dataset (into stat.npz) and every sample file (into latent/) with '
                    'the feature space of eval.features (Inception, or the digits reference classifier); the '
                    'latent/ files of earlier runs are deleted first.')
  flags.DEFINE_bool('fidis', False, 'Compute FID and Inception score (digits: FD and the reference accuracy).')
  flags.DEFINE_bool('prdc', False, 'Compute precision, recall, density and coverage.')
  flags.DEFINE_bool('posterior', False, 'Posterior-score errors of the networks (--restore, --restore_classifier, '
                    '--scale) against the exact scores of the noisy training set, at the σ of eval.posterior_sigmas.')
  flags.DEFINE_float('scale', None, 'Guidance scale λ of --posterior; overrides sampling.scaling_factor when given.')
  flags.DEFINE_string('restore', None, 'Score checkpoint of --posterior; overrides model.score_restore_path.')
  flags.DEFINE_string('restore_classifier', None,
                      'Classifier checkpoint of --posterior; overrides model.classifier_restore_path.')
  flags.DEFINE_string('inception_dir', None, "Folder of TF-GAN's Inception module (overrides "
                      'config.eval.inception_dir).')


def stat_file(workdir):
  return os.path.join(workdir, 'stat', 'stat.npz')


def run_stat(config, workdir):
  """stat.npz from the exact training split, class-contiguous, in the original layout (B15)."""
  images, labels = datasets.load_split(config, 'train')
  stat = evaluation.group_by_class(images, labels, config.classifier.classes)
  os.makedirs(os.path.dirname(stat_file(workdir)), exist_ok=True)
  np.savez(stat_file(workdir), **stat)
  print(f'Stat: {len(images)} training images, {int(stat["size"].min())}-{int(stat["size"].max())} per class '
        f'-> {stat_file(workdir)}')


def check_samples(samples_dir, num_classes):
  """Fail early, naming the folders, when any class has no sample files."""
  empty = [c for c in range(num_classes) if not evaluation.sample_files(os.path.join(samples_dir, str(c)))]
  if empty:
    raise FileNotFoundError(f'no samples_<round>.npz files for classes {empty} under {samples_dir} '
                            '(expected <class>/samples_<round>.npz); run run_lib_sampling.py first')


def run_latent(config, workdir, inception):
  """Features (`inception`: any feature space) of the stat images (into stat.npz) and of every sample file."""
  num_classes, batch_size = config.classifier.classes, config.eval.batch_size
  stat = evaluation.load_stat(stat_file(workdir))
  pools, logits = [], []
  for c in tqdm(range(num_classes), desc='latent: dataset classes'):
    start, size = int(stat['start'][c]), int(stat['size'][c])
    images = evaluation.stat_images_uint8(stat['batch'][start:start + size])
    pool, logit = evaluation.get_inception_features(images, inception, batch_size)
    pools.append(pool)
    logits.append(logit)
  np.savez(stat_file(workdir), **stat, pool_3=np.concatenate(pools), logit=np.concatenate(logits))

  samples_dir, latent_dir = os.path.join(workdir, 'eval_samples'), os.path.join(workdir, 'latent')
  for c in range(num_classes):  # latents of sample files that no longer exist must not be evaluated
    for stale in evaluation.latent_files(os.path.join(latent_dir, str(c))):
      os.remove(stale)
  files = [path for c in range(num_classes) for path in evaluation.sample_files(os.path.join(samples_dir, str(c)))]
  for path in tqdm(files, desc='latent: sample files'):
    pool, logit = evaluation.get_inception_features(evaluation.load_sample_file(path), inception, batch_size)
    out = evaluation.latent_path(latent_dir, path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez_compressed(out, pool_3=pool, logits=logit)
  print(f'Latent: {len(stat["batch"])} dataset images and {len(files)} sample files encoded')
  if hasattr(inception, 'tensorflow_version'):  # the Inception space names the TensorFlow that ran it
    evaluation.update_metrics_file(workdir, 'latent', dict(inception_tensorflow=inception.tensorflow_version))


def load_features(config, workdir):
  """Dataset pools (per class) and sample pools/logits (per class, round order) for the metrics."""
  stat = evaluation.load_stat(stat_file(workdir))
  if 'pool_3' not in stat:
    raise FileNotFoundError(f'{stat_file(workdir)} holds no Inception features; run with --latent first')
  starts, sizes = stat['start'].astype(int), stat['size'].astype(int)
  real = [stat['pool_3'][s:s + n] for s, n in zip(starts, sizes)]
  fake = [evaluation.load_class_latents(os.path.join(workdir, 'latent', str(c)))
          for c in range(config.classifier.classes)]
  return real, fake


def full_mode_sets(real, fake):
  """All real rows against an equal number of samples from every class (B16): min(class size, samples/class)."""
  per_class = min(min(len(r) for r in real), min(len(pool) for pool, _ in fake))
  fake_pool = np.concatenate([pool[:per_class] for pool, _ in fake])
  fake_logits = np.concatenate([logit[:per_class] for _, logit in fake])
  print(f'Full mode: {per_class} samples from each of {len(fake)} classes ({len(fake_pool)} in all) '
        f'against {sum(len(r) for r in real)} training images')
  return np.concatenate(real), fake_pool, fake_logits, per_class


def class_mode_sets(real, fake):
  """Per class: its real rows against its first size_c samples (fewer if fewer exist)."""
  return [(r, pool[:len(r)], logit[:len(r)]) for r, (pool, logit) in zip(real, fake)]


def run_fidis(config, workdir, mode, sets):
  """FID and IS in Inception space; FD and the reference classifier's accuracy on the samples in the digits space."""
  space = evaluation.feature_space(config)
  if space.classifies_data:
    run_accuracy(workdir, mode, sets)
  if mode == 'full':
    real_pool, fake_pool, fake_logits, per_class = sets
    result = {space.distance_name: space.distance(real_pool, fake_pool)}
    if space.has_score:
      result['inception_score'] = space.score(fake_logits)
    print(_scores_line(result))
    if space.has_score:
      result['fid_is_implementation'] = evaluation.fid_is_implementation()
    evaluation.update_metrics_file(workdir, 'full', dict(result, num_real=len(real_pool), num_fake=len(fake_pool),
                                                         samples_per_class=per_class, features=space.name))
    return
  per_class = {space.distance_name: [], 'inception_score': []}
  for c, (real_pool, fake_pool, fake_logits) in enumerate(sets):
    per_class[space.distance_name].append(space.distance(real_pool, fake_pool))
    if space.has_score:
      per_class['inception_score'].append(space.score(fake_logits))
    line = _scores_line({name: values[-1] for name, values in per_class.items() if values})
    print(f'Class {c} ({len(fake_pool)} samples vs {len(real_pool)} real) || {line}')
  per_class = {name: values for name, values in per_class.items() if values}
  averages = {f'cw_{name}': evaluation.classwise_average(values) for name, values in per_class.items()}
  print('\n'.join(f'Avg CW {_SHORT_NAMES[name[3:]]}: {value:.2f}' for name, value in averages.items()))
  if space.has_score:  # the original's layout: IS line, FID line (B7)
    write_lists(os.path.join(workdir, 'fid_is.txt'), [per_class['inception_score'], per_class['fid']])
  implementation = dict(fid_is_implementation=evaluation.fid_is_implementation()) if space.has_score else {}
  evaluation.update_metrics_file(workdir, 'class', dict(per_class, **averages, **implementation, features=space.name,
                                                        num_fake=[len(pool) for _, pool, _ in sets]))


_SHORT_NAMES = {'fid': 'FID', 'fd': 'FD', 'inception_score': 'IS'}


def _scores_line(result):
  return ' || '.join(f'{_SHORT_NAMES[name]}: {value:.2f}' for name, value in result.items())


def run_accuracy(workdir, mode, sets):
  """How often the reference classifier sees the asked-for class, over the samples the other metrics of `mode` use."""
  if mode == 'full':
    _, _, logits, per_class = sets
    labels = np.repeat(np.arange(len(logits) // per_class), per_class)
    accuracy = float(np.mean(logits.argmax(1) == labels))
    print(f'Reference accuracy on the samples: {100 * accuracy:.2f}%')
    evaluation.update_metrics_file(workdir, 'full', dict(sample_accuracy=accuracy))
    return
  accuracies = [float(np.mean(logits.argmax(1) == c)) for c, (_, _, logits) in enumerate(sets)]
  print(f'Avg CW reference accuracy on the samples: {100 * np.mean(accuracies):.2f}%')
  evaluation.update_metrics_file(workdir, 'class', dict(sample_accuracy=accuracies,
                                                        cw_sample_accuracy=evaluation.classwise_average(accuracies)))


def _percentages(result):
  return ' || '.join(f'{name.capitalize()}: {100 * value:.2f}%' for name, value in result.items())


def run_prdc(workdir, mode, sets, nearest_k, device):
  if mode == 'full':
    real_pool, fake_pool, _, per_class = sets
    result = evaluation.compute_prdc_chunked(real_pool, fake_pool, nearest_k, device=device)
    print(_percentages(result))
    evaluation.update_metrics_file(workdir, 'full', dict(result, nearest_k=nearest_k, num_real=len(real_pool),
                                                         num_fake=len(fake_pool), samples_per_class=per_class))
    return
  per_class = {name: [] for name in ('precision', 'recall', 'density', 'coverage')}
  for c, (real_pool, fake_pool, _) in enumerate(sets):
    result = evaluation.compute_prdc_chunked(real_pool, fake_pool, nearest_k, device=device)
    for name, value in result.items():
      per_class[name].append(value)
    print(f'Class {c} || {_percentages(result)}')
  averages = {name: evaluation.classwise_average(values) for name, values in per_class.items()}
  for name, value in averages.items():
    print(f'Avg CW {name.capitalize()}: {100 * value:.2f}%')
  write_lists(os.path.join(workdir, 'prdc.txt'), list(per_class.values()))
  evaluation.update_metrics_file(workdir, 'class', dict(per_class, nearest_k=nearest_k,
                                                        **{f'cw_{n}': v for n, v in averages.items()}))


def write_lists(path, lists):
  """One comma-separated line per list of numbers (the original meant to write these and crashed, B7)."""
  with open(path, 'w') as f:
    f.writelines(', '.join(f'{value:.6f}' for value in values) + '\n' for values in lists)


def run_posterior(config, workdir):
  """Posterior-score errors per σ (evaluation.posterior_score_report) into metrics.json's 'posterior' section."""
  import sde_lib
  from models import checkpoint
  device = mutils.get_device(config)
  score_model, classifier = checkpoint.load_guidance_models(config, *plumbing.checkpoint_paths(config), device)
  splits = evaluation.posterior_splits(config)
  sde, _ = sde_lib.get_sde(config)
  scale = config.sampling.scaling_factor
  import sampling
  report = evaluation.posterior_score_report(sde, (score_model, classifier), splits, config.eval.posterior_sigmas,
                                             scale, config.eval.posterior_draws,
                                             settings=sampling.network_settings(config))
  print(f'Classifier accuracy at σ {sde.sigma_min:g}: {100 * report["clean"]["accuracy"]:.2f}%')
  for sigma, row in report.items():
    if sigma == 'clean':
      continue
    print(f'σ {sigma}: L {row["L"]:.3f} | C {row["C"]:.4f} (unguided {row["C_unguided"]:.4f}, share '
          f'{row["share"]:.4f}) | score error {row["score_error"]:.4f} | half-split likelihood '
          f'{row["half_split"]["likelihood"]:.3f} | accuracy {100 * row["accuracy"]:.1f}%')
  evaluation.update_metrics_file(workdir, 'posterior', dict(report, scale=scale, draws=config.eval.posterior_draws))


def evaluate(config, workdir, mode, stat, latent, fidis, prdc):
  """Run the requested steps in the original order, checking every input before the slow parts start."""
  space = evaluation.feature_space(config)
  if latent:
    check_samples(os.path.join(workdir, 'eval_samples'), config.classifier.classes)
    features = space(config)  # Inception: finds the module folder (fails early), TF loads on first use
    if space.classifies_data:
      evaluation.update_metrics_file(workdir, 'reference', dict(test_accuracy=features.test_accuracy))
  if not stat and not os.path.isfile(stat_file(workdir)):
    raise FileNotFoundError(f'stat file {stat_file(workdir)} not found; run with --stat first')
  if stat:
    run_stat(config, workdir)
  if latent:
    run_latent(config, workdir, features)
  if not (prdc or fidis):
    return
  real, fake = load_features(config, workdir)
  sets = full_mode_sets(real, fake) if mode == 'full' else class_mode_sets(real, fake)
  if prdc:
    run_prdc(workdir, mode, sets, config.eval.nearest_k, mutils.get_device(config))
  if fidis:
    run_fidis(config, workdir, mode, sets)
  print(f'Results written to {os.path.join(workdir, "metrics.json")} and metrics.txt')


def main(argv):
  del argv
  config = FLAGS.config
  plumbing.apply_flag_overrides(config, {
      'eval.inception_dir': FLAGS.inception_dir, 'data.root': FLAGS.data_dir, 'sampling.scaling_factor': FLAGS.scale,
      'model.score_restore_path': FLAGS.restore, 'model.classifier_restore_path': FLAGS.restore_classifier})
  if not (FLAGS.stat or FLAGS.latent or FLAGS.fidis or FLAGS.prdc or FLAGS.posterior):
    raise ValueError('nothing to do: pass at least one of --stat, --latent, --fidis, --prdc, --posterior')
  config_checks.check_evaluation(config)
  if FLAGS.posterior:
    config_checks.check_posterior(config)
    plumbing.checkpoint_paths(config)
  workdir = os.path.join('results', FLAGS.workdir)
  if (FLAGS.latent or FLAGS.fidis or FLAGS.prdc) and not os.path.isdir(workdir):
    raise FileNotFoundError(f'{workdir} does not exist {plumbing.relative_to_here()}: sample into it first '
                            f'(run_lib_sampling.py --workdir {FLAGS.workdir})')
  with plumbing.RunFolderLock(workdir):
    if FLAGS.posterior:
      run_posterior(config, workdir)
    if FLAGS.stat or FLAGS.latent or FLAGS.fidis or FLAGS.prdc:
      evaluate(config, workdir, FLAGS.mode, FLAGS.stat, FLAGS.latent, FLAGS.fidis, FLAGS.prdc)


if __name__ == '__main__':
  define_flags()
  plumbing.run_script(main)
