"""The evaluation command lines end to end on tiny data: stat -> latent -> prdc/fidis in both modes, CAS, errors.

The real Inception weights are not available offline: a stand-in module in the same format (tests/standin_inception.py)
takes their place. Tests that need it are skipped, saying so, where TensorFlow (the evaluation extra) is not installed.
"""

import importlib.metadata
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import evaluation
from tests.standin_inception import NUM_LOGITS, POOL_DIM

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_CONFIG = os.path.join(REPO_ROOT, 'configs/eval/cifar10/eval_cifar10_configs.py')
CAS_CONFIG = os.path.join(REPO_ROOT, 'configs/eval/cifar10/eval_cifar10_configs_cas.py')
NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 6, 3
SAMPLE_ROUNDS, SAMPLES_PER_ROUND = (0, 1, 10), 3  # as text samples_10.npz sorts before samples_1.npz (B17)


def build_standin_inception(path):
  """The stand-in module (tests/standin_inception.py), built by TensorFlow in a process of its own."""
  script = os.path.join(REPO_ROOT, 'tests', 'standin_inception.py')
  result = subprocess.run([sys.executable, script, path], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def skip_without_tensorflow():
  if importlib.util.find_spec('tensorflow') is None:
    pytest.skip('TensorFlow is not installed: the Inception tests need the evaluation extra '
                '(pip install -r requirements-eval.txt; `make test` installs it)')


@pytest.fixture(scope='session')
def standin_inception(tmp_path_factory):
  skip_without_tensorflow()
  return build_standin_inception(str(tmp_path_factory.mktemp('inception')))


@pytest.fixture(scope='module')
def inception(standin_inception):
  """The stand-in served by its Inception process, shared by the tests that compute expected features."""
  process = evaluation.load_inception(standin_inception)
  yield process
  process.close()


def class_images(rng, class_id, count):
  """Images whose colour depends on the class, so features (and CAS) can tell classes apart."""
  base = np.array([25 * class_id, 255 - 25 * class_id, 128], np.float64)
  noise = rng.normal(scale=40, size=(count, 32, 32, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_cifar10_folder(root, rng):
  """A CIFAR-10-format folder (pickled batches) with TRAIN_PER_CLASS / TEST_PER_CLASS images per class."""
  folder = os.path.join(root, 'cifar-10-batches-py')
  os.makedirs(folder)
  splits = {}
  for name, per_class in (('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)):
    labels = np.tile(np.arange(NUM_CLASSES), per_class)  # interleaved, so grouping by class matters
    rng.shuffle(labels)
    images = np.stack([class_images(rng, c, 1)[0] for c in labels])
    splits[name] = images, labels
  train_images, train_labels = splits['train']
  parts = np.array_split(np.arange(len(train_labels)), 5)
  for i, part in enumerate(parts):
    _pickle(os.path.join(folder, f'data_batch_{i + 1}'), train_images[part], train_labels[part])
  _pickle(os.path.join(folder, 'test_batch'), *splits['test'])
  with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
    pickle.dump({'label_names': [f'class{c}' for c in range(NUM_CLASSES)]}, f)
  return splits


def _pickle(path, images, labels):
  with open(path, 'wb') as f:
    pickle.dump({'data': images.transpose(0, 3, 1, 2).reshape(len(images), -1), 'labels': labels.tolist()}, f)


def write_samples(samples_dir, rng):
  """eval_samples/<c>/samples_<r>.npz as the sampler writes them; returns {class: images in round order}."""
  samples = {}
  for c in range(NUM_CLASSES):
    os.makedirs(os.path.join(samples_dir, str(c)))
    rounds = [class_images(rng, c, SAMPLES_PER_ROUND) for _ in SAMPLE_ROUNDS]
    for r, images in zip(SAMPLE_ROUNDS, rounds):
      np.savez_compressed(os.path.join(samples_dir, str(c), f'samples_{r}.npz'), samples=images)
    samples[c] = np.concatenate(rounds)
  return samples


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A working folder with data/ (CIFAR-10 format) and results/run/eval_samples."""
  root = str(tmp_path_factory.mktemp('eval_run'))
  rng = np.random.default_rng(0)
  splits = write_cifar10_folder(os.path.join(root, 'data'), rng)
  samples = write_samples(os.path.join(root, 'results', 'run', 'eval_samples'), rng)
  stale = os.path.join(root, 'results', 'run', 'latent', '0', 'samples_99_latent.npz')  # from an earlier sampling
  os.makedirs(os.path.dirname(stale))
  np.savez_compressed(stale, pool_3=np.zeros((3, POOL_DIM), np.float32), logits=np.zeros((3, NUM_LOGITS), np.float32))
  return dict(root=root, splits=splits, samples=samples)


def run_script(script, args, cwd, env=None):
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script)] + args, cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)
  return result


def evaluation_args(workdir, *steps, mode='full', extra=()):
  return ['--config', EVAL_CONFIG, '--workdir', workdir, '--mode', mode, '--data_dir', 'data',
          '--config.device=cpu', '--config.eval.batch_size=7'] + [f'--{step}' for step in steps] + list(extra)


def expected_sets(tiny_run, inception):
  """Real features per class and the samples each mode must use, computed here independently of the script."""
  train_images, train_labels = tiny_run['splits']['train']
  real = [evaluation.get_inception_features(train_images[train_labels == c], inception, 5)
          for c in range(NUM_CLASSES)]
  fake = [evaluation.get_inception_features(tiny_run['samples'][c][:TRAIN_PER_CLASS], inception, 5)
          for c in range(NUM_CLASSES)]
  return real, fake


@pytest.fixture(scope='module')
def evaluated(tiny_run, standin_inception):
  """Full mode with every step in one process, then class mode on the same files in a second one."""
  full = run_script('run_lib_evaluation.py', evaluation_args(
      'run', 'stat', 'latent', 'fidis', 'prdc', extra=['--inception_dir', standin_inception]), tiny_run['root'])
  assert full.returncode == 0, full.stderr[-3000:]
  cls = run_script('run_lib_evaluation.py', evaluation_args('run', 'fidis', 'prdc', mode='class'), tiny_run['root'])
  assert cls.returncode == 0, cls.stderr[-3000:]
  workdir = os.path.join(tiny_run['root'], 'results', 'run')
  with open(os.path.join(workdir, 'metrics.json')) as f:
    metrics = json.load(f)
  return dict(full=full, cls=cls, workdir=workdir, metrics=metrics)


def test_stat_file_has_the_original_layout_from_the_exact_training_split(tiny_run, evaluated, inception):
  with np.load(os.path.join(evaluated['workdir'], 'stat', 'stat.npz')) as archive:
    stat = dict(archive)
  assert set(stat) == {'batch', 'size', 'start', 'pool_3', 'logit'}
  assert stat['batch'].dtype == np.float64 and stat['batch'].shape == (60, 32, 32, 3)
  np.testing.assert_array_equal(stat['size'], [TRAIN_PER_CLASS] * NUM_CLASSES)
  np.testing.assert_array_equal(stat['start'], np.arange(NUM_CLASSES) * TRAIN_PER_CLASS)
  train_images, train_labels = tiny_run['splits']['train']
  grouped = np.concatenate([train_images[train_labels == c] for c in range(NUM_CLASSES)])
  np.testing.assert_array_equal(evaluation.stat_images_uint8(stat['batch']), grouped)
  pool, logits = evaluation.get_inception_features(grouped, inception, 60)  # one unpadded batch here
  np.testing.assert_allclose(stat['pool_3'], pool, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stat['logit'], logits, rtol=1e-5, atol=1e-5)
  assert stat['pool_3'].shape == (60, POOL_DIM) and stat['logit'].shape == (60, NUM_LOGITS)


def test_standin_module_loads_from_a_prefilled_tfhub_cache(standin_inception, tmp_path, monkeypatch):
  import shutil
  shutil.copytree(standin_inception, evaluation.hub_cache_dir(str(tmp_path)))
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(tmp_path))
  images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
  pool, logits = evaluation.get_inception_features(images, evaluation.load_inception(''), batch_size=4)
  assert pool.shape == (5, POOL_DIM) and logits.shape == (5, NUM_LOGITS)
  direct, _ = evaluation.get_inception_features(images, evaluation.load_inception(standin_inception), batch_size=4)
  np.testing.assert_allclose(pool, direct, rtol=1e-6)


def test_latent_files_hold_each_sample_file_and_nothing_stale(tiny_run, evaluated, inception):
  for c in (0, 9):
    names = os.listdir(os.path.join(evaluated['workdir'], 'latent', str(c)))
    assert sorted(names) == sorted(f'samples_{r}_latent.npz' for r in SAMPLE_ROUNDS)
    with np.load(os.path.join(evaluated['workdir'], 'latent', str(c), 'samples_10_latent.npz')) as archive:
      assert set(archive.files) == {'pool_3', 'logits'}
      pool, _ = evaluation.get_inception_features(tiny_run['samples'][c][-SAMPLES_PER_ROUND:], inception)
      np.testing.assert_allclose(archive['pool_3'], pool, rtol=1e-5, atol=1e-6)
  assert 'latent: sample files' in evaluated['full'].stderr  # progress bar


def test_full_mode_metrics_equal_independent_computation(tiny_run, evaluated, inception):
  real, fake = expected_sets(tiny_run, inception)
  real_pool = np.concatenate([pool for pool, _ in real])
  fake_pool = np.concatenate([pool for pool, _ in fake])  # TRAIN_PER_CLASS samples of every class (B16)
  full = evaluated['metrics']['full']
  assert full['samples_per_class'] == TRAIN_PER_CLASS and full['num_fake'] == full['num_real'] == 60
  assert full['fid'] == pytest.approx(evaluation.fid_from_activations(real_pool, fake_pool), rel=1e-4)
  fake_logits = np.concatenate([logits for _, logits in fake])
  assert full['inception_score'] == pytest.approx(evaluation.inception_score_from_logits(fake_logits), rel=1e-4)
  prdc = evaluation.compute_prdc_chunked(real_pool, fake_pool, 3)
  for name, value in prdc.items():
    assert full[name] == pytest.approx(value, abs=1e-9), name
  out = evaluated['full'].stdout
  assert f"FID: {full['fid']:.2f} || IS: {full['inception_score']:.2f}" in out
  assert f'Full mode: {TRAIN_PER_CLASS} samples from each of {NUM_CLASSES} classes (60 in all)' in out


def test_class_mode_metrics_and_cw_averages(tiny_run, evaluated, inception):
  real, fake = expected_sets(tiny_run, inception)
  cls = evaluated['metrics']['class']
  for c in (0, 7):
    assert cls['fid'][c] == pytest.approx(evaluation.fid_from_activations(real[c][0], fake[c][0]), rel=1e-4)
    assert cls['inception_score'][c] == pytest.approx(evaluation.inception_score_from_logits(fake[c][1]),
                                                      rel=1e-4)
    assert cls['coverage'][c] == pytest.approx(
        evaluation.compute_prdc_chunked(real[c][0], fake[c][0], 3)['coverage'], abs=1e-9)
  for name, cw_name in (('fid', 'cw_fid'), ('inception_score', 'cw_inception_score'), ('precision', 'cw_precision'),
                        ('recall', 'cw_recall'), ('density', 'cw_density'), ('coverage', 'cw_coverage')):
    assert len(cls[name]) == NUM_CLASSES
    assert cls[cw_name] == pytest.approx(np.mean(cls[name]), rel=1e-12)
  out = evaluated['cls'].stdout
  assert f"Avg CW FID: {cls['cw_fid']:.2f}" in out and f"Avg CW Coverage: {100 * cls['cw_coverage']:.2f}%" in out
  fid_is = open(os.path.join(evaluated['workdir'], 'fid_is.txt')).read().splitlines()  # B7: IS line, FID line
  assert [float(v) for v in fid_is[1].split(', ')] == pytest.approx(cls['fid'], abs=1e-6)
  assert len(open(os.path.join(evaluated['workdir'], 'prdc.txt')).read().splitlines()) == 4
  text = open(os.path.join(evaluated['workdir'], 'metrics.txt')).read()
  assert '[class]' in text and '[full]' in text and 'cw_fid' in text


def test_inception_runs_in_its_own_process_and_metrics_record_the_paths(evaluated, standin_inception):
  code = ('import sys, numpy as np, evaluation\n'
          f'inception = evaluation.load_inception({standin_inception!r})\n'
          'features = inception(np.zeros((2, 32, 32, 3), np.uint8))\n'
          'assert "tensorflow" not in sys.modules, "TensorFlow was imported into the PyTorch process"\n'
          'print(inception.tensorflow_version, features["pool_3"].shape)')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  tensorflow_version = importlib.metadata.version('tensorflow')
  assert result.stdout.split('\n')[-2] == f'{tensorflow_version} (2, {POOL_DIM})'
  metrics = evaluated['metrics']
  assert metrics['latent'] == {'inception_tensorflow': tensorflow_version}
  for section in ('full', 'class'):
    assert metrics[section]['fid_is_implementation'] == evaluation.fid_is_implementation()


def test_failing_inception_process_is_reported(tmp_path):
  skip_without_tensorflow()
  os.makedirs(tmp_path / 'variables')
  (tmp_path / 'saved_model.pb').write_bytes(b'not a SavedModel')
  with pytest.raises(RuntimeError, match='Inception process .* ended with exit code 1'):
    evaluation.load_inception(str(tmp_path))


def test_latent_without_tensorflow_names_the_evaluation_extra(tiny_run, tmp_path):
  os.makedirs(tmp_path / 'variables')
  (tmp_path / 'saved_model.pb').write_bytes(b'')
  argv = ['run_lib_evaluation.py'] + evaluation_args('run', 'latent', extra=['--inception_dir', str(tmp_path)])
  code = (f'import runpy, sys; sys.path.insert(0, {REPO_ROOT!r}); sys.modules["tensorflow"] = None; '
          f'sys.argv = {argv!r}; runpy.run_path({os.path.join(REPO_ROOT, "run_lib_evaluation.py")!r}, '
          'run_name="__main__")')  # an install without TensorFlow, as the core alone gives
  result = subprocess.run([sys.executable, '-c', code], cwd=tiny_run['root'], capture_output=True, text=True)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'TensorFlow is not installed' in result.stderr and 'pip install -r requirements-eval.txt' in result.stderr


def _error_run(tiny_run, workdir, steps, extra=(), env=None):
  result = run_script('run_lib_evaluation.py', evaluation_args(workdir, *steps, extra=extra), tiny_run['root'], env)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  return result.stderr


def test_missing_inception_module_is_a_clear_error(tiny_run):
  env = {k: v for k, v in os.environ.items() if k != 'TFHUB_CACHE_DIR'}
  message = _error_run(tiny_run, 'run', ['latent'], env=env)
  assert 'tfgan/eval/inception/1' in message and 'saved_model.pb' in message and '--inception_dir' in message


def test_missing_stat_file_is_a_clear_error(tiny_run):
  os.makedirs(os.path.join(tiny_run['root'], 'results', 'never_evaluated'), exist_ok=True)
  message = _error_run(tiny_run, 'never_evaluated', ['fidis'])
  assert os.path.join('never_evaluated', 'stat', 'stat.npz') in message and '--stat' in message


def test_evaluating_a_missing_workdir_is_one_line_and_leaves_nothing(tiny_run):
  message = _error_run(tiny_run, 'nowhere', ['fidis', 'prdc'])
  errors = [line for line in message.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'results/nowhere does not exist' in errors[0], message
  assert 'run_lib_sampling.py --workdir nowhere' in errors[0]
  assert not os.path.exists(os.path.join(tiny_run['root'], 'results', 'nowhere'))


def test_a_failed_evaluation_start_removes_the_folder_it_created(tiny_run):
  """--stat into a new folder without the data set: one line, and the folder the run lock made is gone."""
  message = _error_run(tiny_run, 'new_stat', ['stat'], extra=['--data_dir', 'nowhere'])
  assert 'cifar-10-batches-py' in message
  assert not os.path.exists(os.path.join(tiny_run['root'], 'results', 'new_stat'))


def test_empty_sample_folder_is_a_clear_error(tiny_run, standin_inception):
  os.makedirs(os.path.join(tiny_run['root'], 'results', 'empty', 'eval_samples', '0'))
  message = _error_run(tiny_run, 'empty', ['stat', 'latent'], extra=['--inception_dir', standin_inception])
  assert 'no samples_<round>.npz files for classes [0, 1, 2' in message and 'eval_samples' in message


def test_cas_trains_on_samples_reports_accuracy_keeps_bounded_checkpoints_and_resumes(tiny_run):
  samples_dir = os.path.join(tiny_run['root'], 'results', 'run', 'eval_samples')

  def cas(n_iters):
    return run_script('run_lib_cas.py', [
        '--config', CAS_CONFIG, '--workdir', 'cas', '--samples_dir', samples_dir, '--data_dir', 'data',
        '--config.device=cpu', '--config.eval.cas_arch=resnet10', '--config.eval.cas_keep_checkpoints=1',
        f'--config.training.n_iters={n_iters}', '--config.training.eval_freq=4', '--config.training.batch_size=16',
        '--config.eval.batch_size=16'], tiny_run['root'])
  first = cas(6)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'tensorflow/' not in first.stderr  # TensorFlow's import logs: CAS (TensorBoard included) never loads it
  workdir = os.path.join(tiny_run['root'], 'results', 'cas')
  ckpt_dir = os.path.join(workdir, 'checkpoints_cas')
  assert sorted(os.listdir(ckpt_dir)) == ['best.pth', 'checkpoint_6.pth', 'history.json']  # evals at 1, 5, 6
  assert [step for step, _ in json.load(open(os.path.join(ckpt_dir, 'history.json')))] == [1, 5, 6]

  second = cas(8)  # resumes after update 6, evaluates after update 8
  assert second.returncode == 0, second.stderr[-3000:]
  history = json.load(open(os.path.join(ckpt_dir, 'history.json')))
  assert [step for step, _ in history] == [1, 5, 6, 8]
  result = json.load(open(os.path.join(workdir, 'metrics.json')))['cas']
  accuracies = [accuracy for _, accuracy in history]
  assert result['final_accuracy'] == accuracies[-1] and result['final_step'] == 8
  assert result['best_accuracy'] == max(accuracies) and result['num_train_samples'] == 90
  assert f"CAS final accuracy: {100 * accuracies[-1]:.2f}%" in second.stdout
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(os.path.join(workdir, 'tensorboard_cas')))

  from models import cas as cas_models
  from models import checkpoint
  model = cas_models.create_cas_classifier(NUM_CLASSES, arch='resnet10')
  checkpoint.restore_weights(os.path.join(ckpt_dir, 'best.pth'), model)
  test_images, test_labels = tiny_run['splits']['test']
  with torch.no_grad():
    logits = model.eval()(torch.from_numpy(test_images).permute(0, 3, 1, 2).float() / 255)
  assert (logits.argmax(1).numpy() == test_labels).mean() == pytest.approx(result['best_accuracy'])
