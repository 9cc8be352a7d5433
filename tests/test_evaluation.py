"""evaluation.py and models/cas.py: metrics against references, file layouts, the lazy TensorFlow import."""

import io
import os
import subprocess
import sys

import numpy as np
import prdc
import pytest
import scipy.linalg
import torch

import evaluation
from models import cas

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('modules', ['evaluation, run_lib_evaluation', 'models.cas, run_lib_cas'])
def test_importing_evaluation_code_does_not_load_tensorflow(modules):
  code = (f'import sys, {modules}\n'
          'tf = ("tensorflow", "tensorflow_gan", "tensorflow_hub")\n'
          'loaded = [m for m in sys.modules if m.split(".")[0] in tf]\n'
          'assert not loaded, loaded\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ FID, IS, CW


def reference_fid(real, fake):
  """FID in NumPy/SciPy: means, 1/(n-1) covariances, scipy's matrix square root."""
  mu_r, mu_f = real.mean(0), fake.mean(0)
  cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  covmean = scipy.linalg.sqrtm(cov_r @ cov_f).real
  return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(covmean))


def reference_inception_score(logits):
  """exp(mean KL(p(y|x) || p(y))) over one split."""
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  p = np.exp(log_p)
  log_q = np.log(p.mean(0))
  return float(np.exp((p * (log_p - log_q)).sum(1).mean()))


def test_fid_matches_numpy_reference():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(500, 64)).astype(np.float32)
  fake = (rng.normal(size=(400, 64)) @ rng.normal(scale=0.3, size=(64, 64)) + 0.5).astype(np.float32)
  fid = evaluation.fid_from_activations(real, fake)
  assert fid == pytest.approx(reference_fid(real.astype(np.float64), fake.astype(np.float64)), rel=1e-5)
  assert evaluation.fid_from_activations(real, real) == pytest.approx(0.0, abs=1e-6)


def test_inception_score_matches_numpy_reference_over_one_split():
  rng = np.random.default_rng(1)
  logits = (3 * rng.normal(size=(300, 50))).astype(np.float32)
  score = evaluation.inception_score_from_logits(logits)
  assert score == pytest.approx(reference_inception_score(logits.astype(np.float64)), rel=1e-5)
  split_mean = np.mean([reference_inception_score(part) for part in np.split(logits.astype(np.float64), 10)])
  assert abs(score - split_mean) > 1e-3  # one split over all samples, not a 10-split mean (B18)


def test_own_fid_and_inception_score_match_numpy_reference():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(300, 40))
  fake = rng.normal(size=(250, 40)) @ rng.normal(scale=0.4, size=(40, 40)) + 0.2
  assert evaluation.frechet_distance(real, fake) == pytest.approx(reference_fid(real, fake), rel=1e-8)
  assert evaluation.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
  logits = 3 * rng.normal(size=(200, 30))
  assert evaluation.inception_score(logits) == pytest.approx(reference_inception_score(logits), rel=1e-12)


@pytest.mark.skipif(not evaluation.tensorflow_gan_installed(),
                    reason='tensorflow-gan is not installed (it imports only with TensorFlow <= 2.15, so Python 3.11 '
                           'with requirements-eval.txt): the equality of the own FID/IS with it is tested there')
@pytest.mark.parametrize('num_real, num_fake, dim', [(600, 500, 96), (150, 120, 200)])  # the second: n < d, singular
def test_own_fid_and_inception_score_equal_tensorflow_gan(num_real, num_fake, dim):
  import evaluation_tf
  rng = np.random.default_rng(dim)
  real = rng.normal(size=(num_real, dim)).astype(np.float32)
  fake = (rng.normal(size=(num_fake, dim)) @ rng.normal(scale=0.3, size=(dim, dim)) + 0.5).astype(np.float32)
  logits = (4 * rng.normal(size=(num_fake, 1008))).astype(np.float32)
  assert evaluation.frechet_distance(real, fake) == pytest.approx(evaluation_tf.tfgan_fid(real, fake), rel=1e-6)
  assert evaluation.inception_score(logits) == pytest.approx(evaluation_tf.tfgan_inception_score(logits), rel=1e-6)
  assert evaluation.fid_is_implementation() == 'tensorflow-gan 2.1.0'


def test_classwise_average_is_plain_mean_over_classes():
  assert evaluation.classwise_average([1.0, 2.0, 3.0, 6.0]) == 3.0
  assert evaluation.classwise_average(np.array([0.5])) == 0.5


# ------------------------------------------------------------------------------------------ PRDC


@pytest.mark.parametrize('nearest_k, dtype', [(3, np.float32), (5, np.float32), (3, np.float64)])
def test_chunked_prdc_equals_prdc_package(nearest_k, dtype):
  rng = np.random.default_rng(nearest_k)
  real = rng.normal(size=(300, 16)).astype(dtype)
  fake = (rng.normal(size=(250, 16)) * 1.2 + 0.3).astype(dtype)
  expected = prdc.compute_prdc(real, fake, nearest_k)
  chunked = evaluation.compute_prdc_chunked(real, fake, nearest_k, max_chunk_bytes=8 * 300 * 37)  # 37-row chunks
  assert set(chunked) == set(expected)
  for name in expected:
    assert chunked[name] == pytest.approx(float(expected[name]), rel=1e-12), name
  assert 0 < chunked['precision'] < 1 and 0 < chunked['recall'] < 1 and 0 < chunked['coverage'] < 1


def test_chunked_prdc_never_builds_more_than_one_chunk(monkeypatch):
  shapes = []
  original = evaluation._pairwise_distances

  def recording(x, y, out_dtype):
    shapes.append((len(x), len(y)))
    return original(x, y, out_dtype)
  monkeypatch.setattr(evaluation, '_pairwise_distances', recording)
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
  evaluation.compute_prdc_chunked(real, fake, 3, max_chunk_bytes=8 * 200 * 10)
  assert max(rows * cols for rows, cols in shapes) <= 200 * 10
  assert sum(rows for rows, cols in shapes if cols == 100) == 300  # fake radii rows + cross rows, each once


def test_prdc_rejects_sets_not_larger_than_k():
  with pytest.raises(ValueError, match='nearest_k=3'):
    evaluation.compute_prdc_chunked(np.zeros((3, 4)), np.zeros((10, 4)), 3)


# ------------------------------------------------------------------------------------------ Inception plumbing


def test_inception_features_use_fixed_padded_batches():
  seen = []

  def fake_inception(batch):  # per-row features, so padding must not leak into the outputs
    seen.append(batch.shape)
    flat = batch.reshape(len(batch), -1).astype(np.float32)
    return {'pool_3': flat[:, :5], 'logits': flat[:, :3] * 2}
  images = np.random.default_rng(0).integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
  pool, logits = evaluation.get_inception_features(images, fake_inception, batch_size=10)
  assert seen == [(10, 4, 4, 3)] * 3
  np.testing.assert_array_equal(pool, images.reshape(23, -1)[:, :5])
  np.testing.assert_array_equal(logits, images.reshape(23, -1)[:, :3] * 2.0)
  evaluation.get_inception_features(images[:4], fake_inception, batch_size=10)
  assert seen[-1] == (4, 4, 4, 3)  # a small input is one batch of its own size
  with pytest.raises(ValueError, match='uint8'):
    evaluation.get_inception_features(images.astype(np.float32), fake_inception)


def test_array_frames_round_trip_through_a_byte_stream():
  import evaluation_tf
  arrays = [np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3), np.linspace(-1, 1, 6, dtype=np.float32),
            np.zeros((0, 5), np.float64)]
  stream = io.BytesIO()
  for array in arrays:
    evaluation_tf.write_array(stream, array)
  stream.seek(0)
  for array in arrays:
    received = evaluation_tf.read_array(stream)
    assert received.dtype == array.dtype and received.shape == array.shape
    np.testing.assert_array_equal(received, array)
  assert evaluation_tf.read_array(stream) is None
  truncated = io.BytesIO()
  evaluation_tf.write_array(truncated, arrays[1])  # 6 float32 values: 24 bytes after the header
  with pytest.raises(EOFError, match='24 bytes'):
    evaluation_tf.read_array(io.BytesIO(truncated.getvalue()[:-10]))


def test_missing_inception_module_error_says_what_and_where(tmp_path, monkeypatch):
  monkeypatch.delenv('TFHUB_CACHE_DIR', raising=False)
  with pytest.raises(evaluation.InceptionModuleNotFound) as error:
    evaluation.find_inception_dir('')
  message = str(error.value)
  for part in ('tfgan/eval/inception/1', 'saved_model.pb', 'variables/', '--inception_dir', 'TFHUB_CACHE_DIR'):
    assert part in message
  with pytest.raises(evaluation.InceptionModuleNotFound, match=str(tmp_path)):
    evaluation.find_inception_dir(str(tmp_path))  # a folder without saved_model.pb


def test_inception_module_found_in_prefilled_tfhub_cache(tmp_path, monkeypatch):
  module_dir = evaluation.hub_cache_dir(str(tmp_path))
  os.makedirs(os.path.join(module_dir, 'variables'))
  open(os.path.join(module_dir, 'saved_model.pb'), 'wb').close()
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(tmp_path))
  assert evaluation.find_inception_dir('') == module_dir
  # tensorflow_hub's cache name for the handle: sha1 of 'https://tfhub.dev/tensorflow/tfgan/eval/inception/1'
  assert os.path.basename(module_dir) == 'c4be6b55dc0338e82546082d22184ebdc77d76cf'


# ------------------------------------------------------------------------------------------ files


def test_stat_layout_is_class_contiguous_and_round_trips_to_uint8():
  rng = np.random.default_rng(0)
  labels = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0], np.int64)
  images = rng.integers(0, 256, size=(9, 2, 2, 3), dtype=np.uint8)
  images[0, 0, 0] = [0, 128, 255]
  stat = evaluation.group_by_class(images, labels, 3)
  assert stat['batch'].dtype == np.float64 and stat['size'].dtype == np.float64
  np.testing.assert_array_equal(stat['size'], [4, 2, 3])
  np.testing.assert_array_equal(stat['start'], [0, 4, 6])
  order = [1, 3, 7, 8, 2, 6, 0, 4, 5]  # class by class, stream order kept within a class
  np.testing.assert_array_equal(evaluation.stat_images_uint8(stat['batch']), images[order])
  every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  roundtrip = evaluation.stat_images_uint8(evaluation.group_by_class(every_value, np.zeros(1, np.int64), 1)['batch'])
  np.testing.assert_array_equal(roundtrip, every_value)  # truncation loses nothing
  with pytest.raises(ValueError, match='labels'):
    evaluation.group_by_class(images, labels, 2)


def test_sample_files_are_sorted_by_round_and_skip_other_files(tmp_path):
  for name in ('samples_10.npz', 'samples_2.npz', 'samples_0.npz', 'samples_2.png', '.samples_3.npz.tmp',
               'samples_3.npz.tmp'):
    (tmp_path / name).write_bytes(b'')
  assert [os.path.basename(p) for p in evaluation.sample_files(str(tmp_path))] == \
      ['samples_0.npz', 'samples_2.npz', 'samples_10.npz']
  assert evaluation.sample_files(str(tmp_path / 'missing')) == []
  assert evaluation.latent_path('lat', os.path.join('x', 'eval_samples', '7', 'samples_10.npz')) == \
      os.path.join('lat', '7', 'samples_10_latent.npz')


def test_load_class_samples_labels_by_folder_and_names_empty_class(tmp_path):
  for c in range(2):
    os.makedirs(tmp_path / str(c))
    for r in (1, 0):
      np.savez_compressed(tmp_path / str(c) / f'samples_{r}.npz',
                          samples=np.full((2, 4, 4, 3), 10 * c + r, np.uint8))
  images, labels = evaluation.load_class_samples(str(tmp_path), 2)
  np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 0, 1, 1, 10, 10, 11, 11])
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])
  with pytest.raises(FileNotFoundError, match='class 2'):
    evaluation.load_class_samples(str(tmp_path), 3)


def test_metrics_file_merges_sections_and_writes_readable_text(tmp_path):
  evaluation.update_metrics_file(str(tmp_path), 'full', {'fid': 3.25})
  metrics = evaluation.update_metrics_file(str(tmp_path), 'class', {'fid': [1.0, 2.5], 'cw_fid': 1.75})
  assert metrics == {'full': {'fid': 3.25}, 'class': {'fid': [1.0, 2.5], 'cw_fid': 1.75}}
  text = (tmp_path / 'metrics.txt').read_text()
  assert '[class]' in text and 'fid: 1, 2.5' in text and 'fid: 3.25' in text


# ------------------------------------------------------------------------------------------ CAS network


def test_cas_resnet50_is_torchvision_layout_with_rebuilt_conv1():
  import torchvision
  torch.manual_seed(0)
  model = cas.create_cas_classifier(100, num_channels=3)
  with torch.device('meta'):  # layout only, no initialisation cost
    reference = torchvision.models.resnet50(num_classes=100)
  assert [k for k, _ in model.state_dict().items()] == [k for k, _ in reference.state_dict().items()]
  assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
  conv1 = model.conv1
  assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((7, 7), (2, 2), (3, 3), None)
  bound = 1 / np.sqrt(3 * 7 * 7)  # PyTorch's default (Kaiming-uniform, a=sqrt(5)) init, as the original (B14)
  assert conv1.weight.abs().max() <= bound and conv1.weight.abs().max() > 0.9 * bound
  assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
  assert cas.create_cas_classifier(10, arch='resnet10')(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
  with pytest.raises(ValueError, match='resnet50'):
    cas.create_cas_classifier(10, arch='vgg')
