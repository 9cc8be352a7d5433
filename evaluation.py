"""Evaluation metrics as the paper computed them, in a feature space chosen by `config.eval.features`.

Feature spaces share one interface (`InceptionFeatures`, `ReferenceFeatures`): called on uint8 NHWC images they
return {'pool_3': features, 'logits': logits}, and they know their Fréchet distance. On CIFAR ('inception') the
features come from TF-GAN's Inception module run by TensorFlow in a process of its own (`evaluation_tf.py`), so this
module, training and sampling never import TensorFlow; FID and IS come from tensorflow-gan's own functions where it
is installed (TensorFlow 2.15, Python 3.11: the paper's combination), else from this module's transcription of the
same formulas, equal to them within 1e-6 relative. On the 8x8 digits ('reference_classifier') the features come from
a small CNN trained here on the real training split, and the Fréchet distance (FD) uses the same formula.
Precision / recall / density / coverage use the `prdc` definitions, computed in memory-bounded chunks, in either space.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F

import evaluation_tf
import fileio
import registry

INCEPTION_HANDLE = 'https://tfhub.dev/tensorflow/tfgan/eval/inception/1'
INCEPTION_POOL = 'pool_3'
INCEPTION_LOGITS = 'logits'
METRIC_NAMES = ('fid', 'is', 'precision', 'recall', 'density', 'coverage')
EVALUATION_EXTRA = 'pip install -r requirements-eval.txt'
FEATURE_SPACES = {}  # config.eval.features -> the class that encodes images
register_feature_space = registry.decorator_for(FEATURE_SPACES)


class InceptionModuleNotFound(FileNotFoundError):
  """The TF-GAN Inception module is not where the run was told to look."""


class EvaluationExtraMissing(fileio.ExpectedError):
  """TensorFlow, needed to run the Inception module, is not installed (reported in one line by the scripts)."""


# ---------------------------------------------------------------------------------------------------------------
# Inception module and features


def hub_cache_dir(cache_root):
  """Folder in which tensorflow_hub caches the Inception module under a TFHUB_CACHE_DIR root."""
  return os.path.join(cache_root, hashlib.sha1(INCEPTION_HANDLE.encode('utf8')).hexdigest())


def _is_saved_model_dir(path):
  return os.path.isfile(os.path.join(path, 'saved_model.pb')) and os.path.isdir(os.path.join(path, 'variables'))


def find_inception_dir(inception_dir=''):
  """Local folder of the Inception module: `inception_dir` if given, else its entry under $TFHUB_CACHE_DIR."""
  cache_root = os.environ.get('TFHUB_CACHE_DIR', '')
  path = inception_dir or (hub_cache_dir(cache_root) if cache_root else '')
  if path and _is_saved_model_dir(path):
    return path
  where = f'in {path}' if path else '(no --inception_dir, config.eval.inception_dir or TFHUB_CACHE_DIR)'
  raise InceptionModuleNotFound(
      f"The Inception network of the paper, TF-GAN's TF-Hub module 'tfgan/eval/inception/1' ({INCEPTION_HANDLE}), "
      f"was not found {where}. It is a TF2 SavedModel folder holding 'saved_model.pb' and 'variables/' "
      "(variables.index, variables.data-*). No hub can be reached at run time, so fetch it once on a machine with "
      "internet access, e.g. python -c \"import tensorflow_hub as hub; "
      f"print(hub.resolve('{INCEPTION_HANDLE}'))\" "
      "prints the downloaded folder; copy that folder here and pass --inception_dir=<folder> (or set "
      "config.eval.inception_dir), or copy it to $TFHUB_CACHE_DIR/"
      f"{os.path.basename(hub_cache_dir(''))}.")


def require_tensorflow():
  """Fail with the install command when TensorFlow (the evaluation extra) is missing."""
  if importlib.util.find_spec('tensorflow') is None:
    raise EvaluationExtraMissing(
        'TensorFlow is not installed: the Inception features need the evaluation extra '
        f'({EVALUATION_EXTRA}; `make test` installs it)')


class InceptionProcess:
  """`run(images_uint8) -> {'pool_3', 'logits'}` (NumPy) served by TensorFlow in a child process (evaluation_tf.py).

  `tensorflow_version` names the TensorFlow that runs the module. The child ends with `close()` or with this process.
  """

  def __init__(self, inception_dir):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'evaluation_tf.py')
    self._child = subprocess.Popen([sys.executable, script, inception_dir], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
    self.tensorflow_version = bytes(self._answer()).decode('ascii')

  def __call__(self, images):
    evaluation_tf.write_array(self._child.stdin, images)
    return {INCEPTION_POOL: self._answer(), INCEPTION_LOGITS: self._answer()}

  def _answer(self):
    answer = evaluation_tf.read_array(self._child.stdout)
    if answer is None:
      raise RuntimeError(f'the Inception process (evaluation_tf.py) ended with exit code {self._child.wait()}; '
                         'its error is printed above')
    return answer

  def close(self):
    if self._child.poll() is None:
      self._child.stdin.close()
      self._child.wait()

  __del__ = close


def load_inception(inception_dir=''):
  """The Inception module of a local folder, run by TensorFlow in its own process (see `InceptionProcess`)."""
  path = find_inception_dir(inception_dir)
  require_tensorflow()
  return InceptionProcess(path)


def get_inception_features(images, inception, batch_size=200):
  """`pool_3` and `logits` of uint8 NHWC images in fixed-size batches on one device; the last batch is padded (B19).

  Inputs smaller than `batch_size` (one sample file) form a single batch of their own size, not a padded one.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
    raise ValueError(f'expected a non-empty uint8 NHWC array, got {images.dtype} {images.shape}')
  batch_size = min(batch_size, len(images))
  pools, logits = [], []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], np.uint8)])
    outputs = inception(padded)
    pools.append(outputs[INCEPTION_POOL][:len(batch)])
    logits.append(outputs[INCEPTION_LOGITS][:len(batch)])
  return np.concatenate(pools), np.concatenate(logits)


# ---------------------------------------------------------------------------------------------------------------
# Feature spaces: one interface for Inception (CIFAR) and the reference classifier (digits)


@register_feature_space('inception')
class InceptionFeatures:
  """TF-GAN's Inception: pool_3 (2048-d) and 1008 ImageNet logits; FID and IS with tensorflow-gan, as the paper."""
  name = 'inception'
  distance_name = 'fid'
  has_score = True  # the Inception score
  classifies_data = False  # ImageNet logits say nothing about the data set's classes

  def __init__(self, config):
    self.inception_dir = find_inception_dir(config.eval.inception_dir)  # a missing module fails before any work
    require_tensorflow()
    self._run = None

  def __call__(self, images):
    return self._process()(images)

  @property
  def tensorflow_version(self):
    return self._process().tensorflow_version

  def _process(self):
    if self._run is None:
      self._run = load_inception(self.inception_dir)
    return self._run

  distance = staticmethod(lambda real, fake: fid_from_activations(real, fake))
  score = staticmethod(lambda logits: inception_score_from_logits(logits))


@register_feature_space('reference_classifier')
class ReferenceFeatures:
  """The reference classifier (models/reference.py): penultimate 32-d features and the data set's logits.

  Trained on the real training split on first use and stored at `eval.reference_classifier`; later runs load it.
  """
  name = 'reference_classifier'
  distance_name = 'fd'
  has_score = False
  classifies_data = True  # argmax of the logits is the digit the classifier sees

  def __init__(self, config, log=print):
    self.model, self.test_accuracy = load_or_train_reference(config, log)

  @torch.no_grad()
  def __call__(self, images):
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.
    features = self.model.features(x)
    return {INCEPTION_POOL: features.numpy(), INCEPTION_LOGITS: self.model.head(features).numpy()}

  distance = staticmethod(lambda real, fake: frechet_distance(real, fake))


def feature_space(config):
  """The feature-space class named by config.eval.features (default 'inception'); instantiate it to encode images.

  Its `distance` (and `score` where `has_score`) need no instance: the metrics run from stored features.
  """
  name = config.eval.get('features', 'inception')
  if name not in FEATURE_SPACES:
    raise ValueError(f'config.eval.features={name!r} is not a feature space; '
                     f'known: {", ".join(sorted(FEATURE_SPACES))}')
  return FEATURE_SPACES[name]


def images_to_unit_nchw(images_uint8):
  """uint8 NHWC tensor -> float NCHW in [0, 1], the input of the CAS and reference classifiers."""
  return images_uint8.permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def classifier_accuracy(model, images, labels, batch_size=500):
  """Top-1 accuracy of `model` (eval mode) over uint8 NHWC tensors and their labels."""
  was_training = model.training
  model.eval()
  correct = sum((model(images_to_unit_nchw(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size])
                .sum().item() for i in range(0, len(images), batch_size))
  model.train(was_training)
  return correct / len(images)


def train_reference_classifier(config, log=print):
  """The reference CNN trained with Adam (lr 1e-3, batch 64) on the real training split; (model, test accuracy)."""
  import datasets
  from models.reference import DigitsCNN
  images, labels = (torch.from_numpy(a) for a in datasets.load_split(config, 'train'))
  test_images, test_labels = (torch.from_numpy(a) for a in datasets.load_split(config, 'test'))
  generator = torch.Generator().manual_seed(config.eval.get('reference_seed', 0))
  torch.manual_seed(config.eval.get('reference_seed', 0))
  model = DigitsCNN(config.data.num_channels, config.classifier.classes)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  for _ in range(config.eval.reference_steps):
    index = torch.randint(len(images), (64,), generator=generator)
    loss = F.cross_entropy(model(images_to_unit_nchw(images[index])), labels[index])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
  accuracy = classifier_accuracy(model, test_images, test_labels)
  log(f'Reference classifier: {config.eval.reference_steps} steps, test accuracy {100 * accuracy:.2f}% '
      f'on {len(test_labels)} real test images')
  return model.eval(), accuracy


def load_or_train_reference(config, log=print):
  """(model, test accuracy) from eval.reference_classifier, trained and written there first if it is missing."""
  from models import checkpoint
  from models.reference import DigitsCNN
  path = config.eval.reference_classifier
  if not os.path.isfile(path):
    model, accuracy = train_reference_classifier(config, log)
    checkpoint.atomic_save({'model': model.state_dict(), 'test_accuracy': accuracy}, path)
    return model, accuracy
  stored = checkpoint.load_checkpoint_file(path)
  model = DigitsCNN(config.data.num_channels, config.classifier.classes)
  model.load_state_dict(stored['model'])
  log(f'Reference classifier: {path}, test accuracy {100 * stored["test_accuracy"]:.2f}%')
  return model.eval(), stored['test_accuracy']


# ---------------------------------------------------------------------------------------------------------------
# FID, IS and class-wise averages


def tensorflow_gan_installed():
  return importlib.util.find_spec('tensorflow_gan') is not None


def fid_is_implementation():
  """Which code computes FID and IS here; metrics.json records it."""
  if tensorflow_gan_installed():
    return f"tensorflow-gan {importlib.metadata.version('tensorflow-gan')}"
  return "dlsm evaluation.py (tensorflow-gan's formulas in NumPy)"


def fid_from_activations(real, fake):
  """FID of two activation sets: tensorflow-gan's function where installed, else `frechet_distance`."""
  if tensorflow_gan_installed():
    return evaluation_tf.tfgan_fid(real, fake)
  return frechet_distance(real, fake)


def inception_score_from_logits(logits):
  """Inception score over one split of all logits, as the paper (B18): tensorflow-gan's where installed."""
  if tensorflow_gan_installed():
    return evaluation_tf.tfgan_inception_score(logits)
  return inception_score(logits)


def frechet_distance(real, fake):
  """FID as tensorflow-gan computes it: float64, 1/(n-1) covariances, Tr √(Σr Σf) = Tr √(A Σf A) with A = √Σr."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  root = _symmetric_square_root(cov_real)
  trace_sqrt_product = np.trace(_symmetric_square_root(root @ cov_fake @ root))
  mean_term = np.sum((real.mean(0) - fake.mean(0)) ** 2)
  return float(np.trace(cov_real) + np.trace(cov_fake) - 2.0 * trace_sqrt_product + mean_term)


def _symmetric_square_root(matrix, eps=1e-10):
  """U diag(√s) Vᵀ from the SVD, keeping singular values below `eps` unrooted, as tensorflow-gan does."""
  u, s, vt = np.linalg.svd(matrix)
  return (u * np.where(s < eps, s, np.sqrt(s))) @ vt


def inception_score(logits):
  """exp(mean over samples of KL(p(y|x) || p(y))) in float64, with p(y) the mean of p(y|x), as tensorflow-gan."""
  log_p = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=1)
  p = np.exp(log_p)
  return float(np.exp(np.mean(np.sum(p * (log_p - np.log(p.mean(0))), axis=1))))


def classwise_average(per_class):
  """The paper's CW metric: the plain mean of per-class values, Σ_c m_c / C."""
  return float(np.sum(per_class) / len(per_class))


# ---------------------------------------------------------------------------------------------------------------
# Precision / recall / density / coverage, chunked (B20)


def _pairwise_distances(x, y, out_dtype):
  """Euclidean distances as scikit-learn computes them for prdc: float64 expansion, cast, clipped at 0, sqrt."""
  squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
  return squared.to(out_dtype).clamp_(min=0).sqrt_()


def _rows_per_chunk(num_columns, max_chunk_bytes):
  return max(1, min(int(max_chunk_bytes // (8 * num_columns)), 1 << 20))


def _kth_neighbour_radii(features, nearest_k, out_dtype, max_chunk_bytes):
  """Distance of each point to its k-th nearest other point (the (k+1)-th smallest, self included)."""
  n = len(features)
  rows = _rows_per_chunk(n, max_chunk_bytes)
  radii = []
  for start in range(0, n, rows):
    distances = _pairwise_distances(features[start:start + rows], features, out_dtype)
    index = torch.arange(start, min(start + rows, n), device=features.device)
    distances[index - start, index] = 0.0  # self-distance, exactly 0 as scikit-learn sets it
    radii.append(torch.kthvalue(distances, nearest_k + 1, dim=1).values)
  return torch.cat(radii)


def compute_prdc_chunked(real, fake, nearest_k, device='cpu', max_chunk_bytes=2**28):
  """Precision, recall, density and coverage with prdc's definitions (strict `<` comparisons, Euclidean).

  Equal to `prdc.compute_prdc` but never holds more than one chunk of a distance matrix (about `max_chunk_bytes`),
  so 50 000 x 50 000 fits in memory.
  """
  out_dtype = torch.float64 if np.asarray(real).dtype == np.float64 else torch.float32
  real = torch.as_tensor(np.asarray(real), dtype=torch.float64, device=device)
  fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64, device=device)
  if min(len(real), len(fake)) <= nearest_k:
    raise ValueError(f'PRDC with nearest_k={nearest_k} needs more than {nearest_k} real and fake points, '
                     f'got {len(real)} real and {len(fake)} fake')
  real_radii = _kth_neighbour_radii(real, nearest_k, out_dtype, max_chunk_bytes)
  fake_radii = _kth_neighbour_radii(fake, nearest_k, out_dtype, max_chunk_bytes)
  fake_in_real_balls = torch.zeros(len(fake), dtype=torch.int64, device=device)
  real_in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=device)
  real_covered = torch.zeros(len(real), dtype=torch.bool, device=device)
  rows = _rows_per_chunk(len(fake), max_chunk_bytes)
  for start in range(0, len(real), rows):
    distances = _pairwise_distances(real[start:start + rows], fake, out_dtype)
    radii = real_radii[start:start + rows, None]
    fake_in_real_balls += (distances < radii).sum(0)
    real_in_fake_ball[start:start + rows] = (distances < fake_radii[None, :]).any(1)
    real_covered[start:start + rows] = distances.min(1).values < radii[:, 0]
  return dict(precision=(fake_in_real_balls > 0).double().mean().item(),
              recall=real_in_fake_ball.double().mean().item(),
              density=fake_in_real_balls.double().mean().item() / nearest_k,
              coverage=real_covered.double().mean().item())


# ---------------------------------------------------------------------------------------------------------------
# Files: sample folders, stat file, results


def _round_files(folder, pattern):
  """Files of `folder` whose names match `pattern` (one integer group, the round), sorted by round (B17)."""
  if not os.path.isdir(folder):
    return []
  rounds = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := pattern.match(name))]
  return [os.path.join(folder, name) for _, name in sorted(rounds)]


def sample_files(class_dir):
  """The sampler's `samples_<r>.npz` files of one class folder in round order; temporary files are ignored."""
  return _round_files(class_dir, re.compile(r'^samples_(\d+)\.npz$'))


def latent_files(class_dir):
  """The `samples_<r>_latent.npz` files of one class folder in round order."""
  return _round_files(class_dir, re.compile(r'^samples_(\d+)_latent\.npz$'))


def latent_path(latent_dir, sample_path):
  """Where the Inception features of a sample file go: latent/<c>/samples_<r>_latent.npz."""
  class_id = os.path.basename(os.path.dirname(sample_path))
  name = os.path.basename(sample_path)[:-len('.npz')] + '_latent.npz'
  return os.path.join(latent_dir, class_id, name)


def load_class_latents(class_dir):
  """Concatenated `pool_3` and `logits` of one class's latent files, in round order."""
  pools, logits = [], []
  for path in latent_files(class_dir):
    with np.load(path) as archive:
      pools.append(archive[INCEPTION_POOL])
      logits.append(archive[INCEPTION_LOGITS])
  if not pools:
    raise FileNotFoundError(f'no samples_<round>_latent.npz files in {class_dir}; run with --latent first')
  return np.concatenate(pools), np.concatenate(logits)


def load_sample_file(path):
  """The uint8 NHWC `samples` array of one sampler output file."""
  with np.load(path) as archive:
    return archive['samples']


def load_class_samples(samples_dir, num_classes):
  """All samples under `samples_dir/<c>/samples_<r>.npz`, classes 0..C-1 in round order, with their labels."""
  images, labels = [], []
  for class_id in range(num_classes):
    class_images = [load_sample_file(path) for path in sample_files(os.path.join(samples_dir, str(class_id)))]
    if not class_images:
      raise FileNotFoundError(f'no samples_<round>.npz files for class {class_id} in '
                              f'{os.path.join(samples_dir, str(class_id))}; run run_lib_sampling.py first')
    images.extend(class_images)
    labels.extend(np.full(len(x), class_id, np.int64) for x in class_images)
  return np.concatenate(images), np.concatenate(labels)


def group_by_class(images, labels, num_classes):
  """Images re-ordered class by class (stable within a class) and the original stat layout {batch, size, start}."""
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]')
  order = np.argsort(labels, kind='stable')
  size = np.bincount(labels, minlength=num_classes)[:num_classes]
  start = np.concatenate([[0], np.cumsum(size)[:-1]])
  return dict(batch=images[order].astype(np.float64) / 255.0, size=size.astype(np.float64),
              start=start.astype(np.float64))


def load_stat(path):
  """The arrays of a stat.npz file (batch, size, start and, after --latent, pool_3 and logit)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'stat file {path} not found; run run_lib_evaluation.py with --stat first')
  with np.load(path) as archive:
    return {key: archive[key] for key in archive.files}


def stat_images_uint8(batch):
  """uint8 images of stat rows, as the original converts them: clip(x*255, 0, 255) then truncation."""
  return np.clip(batch * 255.0, 0, 255).astype(np.uint8)


def update_metrics_file(workdir, section, values):
  """Merge `values` into `workdir/metrics.json` under `section` (atomic rewrite) and refresh `metrics.txt`."""
  path = os.path.join(workdir, 'metrics.json')
  metrics = {}
  if os.path.exists(path):
    with open(path) as f:
      metrics = json.load(f)
  metrics.setdefault(section, {}).update(values)
  write_json_atomic(path, metrics)
  fileio.write_text_atomic(os.path.join(workdir, 'metrics.txt'), format_metrics(metrics))
  return metrics


def format_metrics(metrics):
  """A human-readable report of a metrics.json dictionary."""
  lines = []
  for section in sorted(metrics):
    lines.append(f'[{section}]')
    for key, value in sorted(metrics[section].items()):
      if isinstance(value, list):
        value = ', '.join(_format_number(v) for v in value)
      else:
        value = _format_number(value)
      lines.append(f'{key}: {value}')
    lines.append('')
  return '\n'.join(lines)


def _format_number(value):
  return f'{value:.6g}' if isinstance(value, float) else str(value)


def write_json_atomic(path, obj):
  fileio.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


# ---------------------------------------------------------------------------------------------------------------
# Posterior-score errors: the networks against the exact scores of the noisy empirical distribution (mixture.py)

def noisy_points(images, labels, sigma, draws, generator):
  """(x + σz float64, labels): `draws` noise draws of every image, draw-major."""
  images = torch.as_tensor(images, dtype=torch.float64)
  noise = torch.randn(draws, *images.shape, generator=generator, dtype=torch.float64)
  return (images[None] + sigma * noise).reshape(-1, *images.shape[1:]), torch.as_tensor(labels).repeat(draws)


def half_of_each_class(labels, generator):
  """A boolean mask that keeps a random half (rounded down) of every class's members."""
  labels = torch.as_tensor(labels)
  keep = torch.zeros(len(labels), dtype=torch.bool)
  for c in labels.unique():
    members = torch.nonzero(labels == c).flatten()
    keep[members[torch.randperm(len(members), generator=generator)[:len(members) // 2]]] = True
  return keep


def half_split_agreement(centres, centre_labels, noisy, labels, sigma, generator):
  """{prior, conditional, likelihood}: relative squared difference between the oracle over a random half of each
  class's centres and the oracle over all of them, at the same points. Small where the finite set does not matter."""
  import mixture
  centre_labels = torch.as_tensor(centre_labels)
  keep = half_of_each_class(centre_labels, generator)
  full = mixture.posterior_scores(noisy, labels, centres, centre_labels, sigma)
  half = mixture.posterior_scores(noisy, labels, centres[keep], centre_labels[keep], sigma)
  return {name: mixture.relative_squared_error(half[name], full[name]) for name in full}


def posterior_score_errors(oracle, prior, likelihood, scale):
  """Relative squared errors (mixture.relative_squared_error) of networks' fields at the oracle's points:
  score_error (s_θ vs ∇log p_σ(x̃)), L (λ∇log p_φ(y|x̃) vs ∇log p_σ(y|x̃)), C (s_θ + λ∇log p_φ vs ∇log p_σ(x̃|y)),
  C_unguided (s_θ vs ∇log p_σ(x̃|y)) and share = E‖∇log p_σ(y|x̃)‖² / E‖∇log p_σ(x̃|y)‖², what a perfect
  classifier could remove from C_unguided."""
  import mixture
  error = mixture.relative_squared_error
  return dict(score_error=error(prior, oracle['prior']), L=error(scale * likelihood, oracle['likelihood']),
              C=error(prior + scale * likelihood, oracle['conditional']),
              C_unguided=error(prior, oracle['conditional']),
              share=(oracle['likelihood'] ** 2).sum().item() / (oracle['conditional'] ** 2).sum().item())


def network_fields(sde, networks, noisy, labels, sigma, settings=None, batch_size=500):
  """(s_θ(x̃, σ), ∇x log p_φ(y | x̃, σ), the classifier's accuracy) at the noisy points, the fields in float64, of
  networks = (score model, classifier) in eval mode, run as `settings` (a sampling.NetworkSettings; default
  float32) say; the likelihood gradient is the one guidance uses (sampling.log_prob_grad)."""
  import sampling
  settings = settings or sampling.NetworkSettings()
  score_fn = sampling.as_score_fn(sde, networks[0], True, settings.dtype, settings.compile)
  classifier_fn = sampling.as_classifier_fn(sde, networks[1], True, settings.compile, settings.classifier_dtype)
  device = next(networks[0].parameters()).device
  t = float(sde.time_of_sigma(torch.tensor(sigma, dtype=torch.float64)))
  priors, likelihoods, correct = [], [], 0
  for x, y in zip(noisy.split(batch_size), labels.split(batch_size)):
    x, y = x.float().to(device), y.to(device)
    time = torch.full((len(x),), t, device=device)
    with torch.no_grad():
      priors.append(score_fn(x, time).double().cpu())
      correct += (classifier_fn(x, time).argmax(1) == y).sum().item()
    likelihoods.append(sampling.log_prob_grad(classifier_fn, x, time, y).double().cpu())
  return torch.cat(priors), torch.cat(likelihoods), correct / len(labels)


def posterior_splits(config):
  """(train images, train labels, test images, test labels) of the data set, images as the networks see them
  (NCHW, the data scaler applied, float64): the splits of posterior_score_report."""
  import datasets
  scaler = datasets.get_data_scaler(config)
  splits = []
  for split in ('train', 'test'):
    images, labels = datasets.load_split(config, split)
    splits += [scaler(images_to_unit_nchw(torch.from_numpy(images))).double(), torch.from_numpy(labels)]
  return tuple(splits)


def posterior_score_report(sde, networks, splits, sigmas, scale, draws=4, seed=0, settings=None):
  """{σ: posterior_score_errors, the classifier's accuracy and the half-split agreement} of networks = (score model,
  classifier), run as `settings` say (network_fields), with x̃ = test image + σz (`draws` per image, the same points
  for every network: `seed`) and the oracle over the training images; 'clean' holds the classifier's accuracy at
  the SDE's smallest σ.

  splits = (train images, train labels, test images, test labels), images as the networks see them (NCHW).
  """
  import mixture
  train, train_labels, test, test_labels = splits
  generator = torch.Generator().manual_seed(seed)
  noisy, labels = noisy_points(test, test_labels, sde.sigma_min, 1, generator)
  report = dict(clean=dict(accuracy=network_fields(sde, networks, noisy, labels, sde.sigma_min, settings)[2]))
  for sigma in sigmas:
    generator = torch.Generator().manual_seed(seed)
    noisy, labels = noisy_points(test, test_labels, sigma, draws, generator)
    oracle = mixture.posterior_scores(noisy, labels, train, train_labels, sigma)
    prior, likelihood, accuracy = network_fields(sde, networks, noisy, labels, sigma, settings)
    report[f'{sigma:g}'] = dict(posterior_score_errors(oracle, prior, likelihood, scale), accuracy=accuracy,
                                half_split=half_split_agreement(train, train_labels, noisy, labels, sigma, generator))
  return report


# ---------------------------------------------------------------------------------------------------------------
# An independent judge of digit samples (neither the networks nor the reference classifier)

class PixelJudge:
  """An RBF-SVC (scikit-learn's defaults) fitted on every real digit, train and test, and the Fréchet distance in
  pixel space (64 values in [0, 1]) to the training split."""

  def __init__(self, config):
    import datasets
    from sklearn.svm import SVC
    train, train_labels = datasets.load_split(config, 'train')
    test, test_labels = datasets.load_split(config, 'test')
    self.train_pixels = self.pixels(train)
    self.svc = SVC().fit(np.concatenate([self.train_pixels, self.pixels(test)]),
                         np.concatenate([train_labels, test_labels]))
    self.num_classes = config.classifier.classes

  @staticmethod
  def pixels(images_uint8):
    return np.asarray(images_uint8, np.float64).reshape(len(images_uint8), -1) / 255.

  def __call__(self, images_uint8, labels):
    """{'recognised': the SVC's class-wise averaged accuracy on the asked-for `labels`, 'pixel_fd'}."""
    pixels, labels = self.pixels(images_uint8), np.asarray(labels)
    predictions = self.svc.predict(pixels)
    recognised = [np.mean(predictions[labels == c] == c) for c in range(self.num_classes)]
    return dict(recognised=classwise_average(recognised), pixel_fd=frechet_distance(self.train_pixels, pixels))
