"""Bad inputs through the real command lines, on tiny data: each ends with exit status 1, no traceback, one 'error:'
line naming the field / file, and every file that existed before byte-identical afterwards."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fileio
import plumbing
from tests.cifar_fixture import write_cifar_folder
from tests.helpers import REPO_ROOT, default_sigint
from tests.test_train_scripts import (CLASSIFIER_CONFIG, SCORE_CONFIG, TINY_SCORE, environment, main_command, run_main,
                                      schedule)

CAS_CONFIG = str(REPO_ROOT / 'configs/eval/cifar10/eval_cifar10_configs_cas.py')


def files_under(folder):
  """{relative path: bytes} of every file below `folder`."""
  return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), 'rb').read()
          for root, _, names in os.walk(folder) for name in names}


def assert_one_line_error(result, *fragments):
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """A CIFAR-10 folder and an earlier run 'prev' whose files must survive every refused command."""
  root = tmp_path_factory.mktemp('bad_inputs')
  write_cifar_folder(root / 'data', 'CIFAR10', num_train=48, num_test=32)
  prev = root / 'results' / 'prev'
  (prev / 'checkpoints').mkdir(parents=True)
  (prev / 'log.txt').write_text('an earlier run\n')
  (prev / 'config.txt').write_text('earlier config\n')
  (prev / 'checkpoints' / 'checkpoint_2.pth').write_bytes(os.urandom(256))
  return root


CONFIG_CASES = {
    'misspelt field': (['--config.model.nff=3'], ['--config.model.nff', 'did you mean "nf"']),
    'wrong type': (['--config.training.batch_size=abc'], ['--config.training.batch_size=abc']),
    'zero batch': (['--config.training.batch_size=0'], ['training.batch_size=0', '> 0']),
    'negative batch': (['--config.training.batch_size=-2'], ['training.batch_size=-2']),
    'zero snapshot_freq': (['--config.training.snapshot_freq=0'], ['training.snapshot_freq=0']),
    'zero log_freq': (['--config.training.log_freq=0'], ['training.log_freq=0']),
    'zero eval_freq': (['--config.training.eval_freq=0'], ['training.eval_freq=0']),
    'negative n_iters': (['--config.training.n_iters=-5'], ['training.n_iters=-5', '>= 0']),
    'no scales': (['--config.model.num_scales=0'], ['model.num_scales=0', '>= 1']),
    'unknown sde': (['--config.training.sde=vesde2'], ['training.sde', "'vesde2'", 'vpsde']),
    'vp sde with ve model': (['--config.training.sde=vpsde'], ['model.scale_by_sigma=True', ':vpsde']),
}


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_bad_training_config_is_one_line_and_touches_nothing(root, case):
  overrides, fragments = CONFIG_CASES[case]
  before = files_under(root / 'results')
  result = run_main(root, SCORE_CONFIG, 'score', 'prev', '--data_dir=data', *TINY_SCORE, *overrides)
  assert_one_line_error(result, *fragments)
  assert files_under(root / 'results') == before


def test_positional_embedding_needs_a_thousand_scales_under_continuous_vp(root):
  before = files_under(root / 'results')
  result = run_main(root, f'{SCORE_CONFIG}:vpsde', 'score', 'prev', '--data_dir=data', *TINY_SCORE,
                    '--config.model.num_scales=20')
  assert_one_line_error(result, 'model.num_scales=20', 'positional', '999·t')
  assert files_under(root / 'results') == before


@pytest.mark.parametrize('config, fragments', [
    ('nonexistent_config.py', ['--config nonexistent_config.py', 'is not a file']),
    (f'{SCORE_CONFIG}:vpsd', ["unknown SDE 'vpsd'", 'vpsde or subvpsde'])])
def test_a_missing_or_failing_config_file_is_one_line(root, config, fragments):
  assert_one_line_error(run_main(root, config, 'score', 'prev', '--data_dir=data'), *fragments)


def test_the_last_of_repeated_overrides_wins_in_either_form():
  argv = ['main.py', '--config', 'c.py', '--config.model.ch_mult=(1,2)', '--config.model.nf', '8', '--workdir=w',
          '--config.model.ch_mult', '(1,)', '--config.model.nf=16', 'rest']
  assert plumbing.last_override_wins(argv) == ['main.py', '--config', 'c.py', '--workdir=w', '--config.model.ch_mult',
                                               '(1,)', '--config.model.nf=16', 'rest']


def test_classifier_batch_larger_than_the_test_split_names_eval_batch_size(root, tmp_path):
  from models import checkpoint, utils as mutils
  from models.ema import ExponentialMovingAverage
  from tests.helpers import load_config
  config = load_config('configs/classifier/cifar10_classifier_resnet18_cond_configs.py')
  config.device, config.model.nf, config.model.num_res_blocks, config.model.ch_mult = 'cpu', 8, 1, (1, 2)
  score_model = mutils.create_model(config)
  checkpoint.save_checkpoint(str(tmp_path / 'score.pth'), score_model, step=1,
                             ema=ExponentialMovingAverage(score_model.parameters(), 0.999))
  result = run_main(root, CLASSIFIER_CONFIG, 'classifier', 'big_eval_batch', '--data_dir=data',
                    f'--restore={tmp_path / "score.pth"}', *TINY_SCORE[:3], '--config.training.batch_size=4',
                    '--config.classifier.resnet_base_width=4', '--config.classifier.nf=8',
                    '--config.eval.batch_size=64', *schedule(1, 1))
  assert_one_line_error(result, 'eval.batch_size=64', 'only 32 examples')


def test_help_exits_zero():
  result = subprocess.run([sys.executable, str(REPO_ROOT / 'main.py'), '--help'], capture_output=True, text=True,
                          env=environment(), timeout=120)
  assert result.returncode == 0 and '--workdir' in result.stdout


def test_a_corrupt_cifar_batch_header_is_one_line(tmp_path):
  write_cifar_folder(tmp_path / 'data', 'CIFAR10', num_train=48, num_test=32)
  batch = tmp_path / 'data' / 'cifar-10-batches-py' / 'data_batch_1'
  content = bytearray(batch.read_bytes())
  content[7:11] = b'\xf0\xff\xff\x7f'  # the length of the first string: 2 GiB
  batch.write_bytes(bytes(content))
  result = run_main(tmp_path, SCORE_CONFIG, 'score', 'corrupt_data', '--data_dir=data', *TINY_SCORE, *schedule(1, 1))
  assert_one_line_error(result, 'cifar-10-batches-py', 'extract cifar-10-python.tar.gz again')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_workdir_is_one_line(root):
  folder = root / 'results' / 'read_only'
  folder.mkdir(parents=True)
  folder.chmod(0o555)
  try:
    result = run_main(root, SCORE_CONFIG, 'score', 'read_only', '--data_dir=data', *TINY_SCORE, *schedule(1, 1))
  finally:
    folder.chmod(0o755)
  assert_one_line_error(result, 'results/read_only', 'Permission denied')
  assert os.listdir(folder) == []


def test_a_busy_workdir_names_the_holder(root):
  before = files_under(root / 'results')
  with plumbing.RunFolderLock(str(root / 'results' / 'prev')):
    result = run_main(root, SCORE_CONFIG, 'score', 'prev', '--data_dir=data', *TINY_SCORE, *schedule(1, 1))
  assert_one_line_error(result, 'results/prev is in use by pid', f'pid {os.getpid()} on host')
  assert files_under(root / 'results') == before


def write_samples(folder, num_classes=10, per_class=9):
  rng = np.random.default_rng(0)
  for c in range(num_classes):
    os.makedirs(folder / str(c), exist_ok=True)
    np.savez(folder / str(c) / 'samples_0.npz', samples=rng.integers(0, 256, (per_class, 32, 32, 3), np.uint8))


def run_cas(root, arch, n_iters):
  command = [sys.executable, str(REPO_ROOT / 'run_lib_cas.py'), '--config', CAS_CONFIG, '--workdir', 'cas',
             '--samples_dir', str(root / 'samples'), '--data_dir', 'data', '--config.device=cpu',
             f'--config.eval.cas_arch={arch}', f'--config.training.n_iters={n_iters}', '--config.training.eval_freq=2',
             '--config.training.batch_size=8', '--config.eval.batch_size=16']
  return subprocess.run(command, cwd=root, env=environment(), capture_output=True, text=True, timeout=300)


def test_cas_with_another_arch_than_its_folder_is_one_line(tmp_path):
  write_cifar_folder(tmp_path / 'data', 'CIFAR10', num_train=48, num_test=32)
  write_samples(tmp_path / 'samples')
  first = run_cas(tmp_path, 'resnet10', 2)
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = tmp_path / 'results' / 'cas'
  assert os.listdir(workdir / 'tensorboard_cas') and not (workdir / 'tensorboard').exists()
  before = files_under(workdir)
  result = run_cas(tmp_path, 'resnet18', 4)
  assert_one_line_error(result, 'checkpoint_2.pth', "eval.cas_arch='resnet18'")
  assert files_under(workdir) == before


def test_a_full_disk_inside_torch_save_is_named(tmp_path):
  """torch.save reports a failed write as a RuntimeError from its zip writer: the message still says what happened."""
  path = tmp_path / 'checkpoint_1.pth'
  path.write_bytes(b'the previous file')

  def fail_like_torch_save(file):
    file.write(b'PK half')
    raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: No space left on device')
  with pytest.raises(OSError) as error:
    fileio.atomic_write(str(path), fail_like_torch_save)
  assert str(path) in str(error.value) and 'cannot write: No space left on device' in str(error.value)
  assert os.listdir(tmp_path) == ['checkpoint_1.pth'] and path.read_bytes() == b'the previous file'


# ---------------------------------------------------------------------------------------------
# A failed start leaves nothing behind, and the corrected command then runs.

def assert_leaves_nothing(root, workdir):
  assert not (root / 'results' / workdir).exists(), sorted(files_under(root / 'results' / workdir))


@pytest.fixture(scope='module')
def score_run_folder(root):
  """A run folder (outside results/) holding a tiny score checkpoint, as a finished score run leaves it."""
  from models import checkpoint, utils as mutils
  from models.ema import ExponentialMovingAverage
  from tests.helpers import load_config
  config = load_config('configs/classifier/cifar10_classifier_resnet18_cond_configs.py')
  config.device, config.model.nf, config.model.num_res_blocks, config.model.ch_mult = 'cpu', 8, 1, (1, 2)
  score_model = mutils.create_model(config)
  folder = root / 'runs' / 'score'
  checkpoint.save_checkpoint(str(folder / 'checkpoints' / 'checkpoint_4.pth'), score_model, step=4,
                             ema=ExponentialMovingAverage(score_model.parameters(), 0.999))
  return folder


def run_tiny_classifier(root, workdir, restore):
  return run_main(root, CLASSIFIER_CONFIG, 'classifier', workdir, '--data_dir=data', f'--restore={restore}',
                  *TINY_SCORE[:3], '--config.training.batch_size=4', '--config.classifier.resnet_base_width=4',
                  '--config.classifier.nf=8', '--config.eval.batch_size=16', *schedule(1, 2))


def test_a_missing_config_file_with_an_override_is_one_line(root):
  result = run_main(root, 'configs/score/cifar10_score_config.py', 'score', 'typo', '--config.model.nf=8')
  assert_one_line_error(result, '--config configs/score/cifar10_score_config.py', 'is not a file',
                        f'relative to the current directory, {root}')
  assert_leaves_nothing(root, 'typo')
  assert run_main(root, SCORE_CONFIG, 'score', 'typo', '--data_dir=data', *TINY_SCORE, *schedule(0, 1)).returncode == 0


def test_restore_pointing_at_a_run_folder_names_its_newest_checkpoint(root, score_run_folder):
  result = run_tiny_classifier(root, 'from_folder', score_run_folder)
  newest = score_run_folder / 'checkpoints' / 'checkpoint_4.pth'
  assert_one_line_error(result, f'model.score_restore_path = {score_run_folder} is a folder, not a checkpoint file',
                        '--restore', f'its newest is {newest}')
  assert_leaves_nothing(root, 'from_folder')
  corrected = run_tiny_classifier(root, 'from_folder', newest)
  assert corrected.returncode == 0, corrected.stderr[-3000:]


def test_a_failed_classifier_start_leaves_no_run_folder(root, score_run_folder):
  missing = score_run_folder / 'checkpoints' / 'checkpoint_9.pth'
  result = run_tiny_classifier(root, 'failed_start', missing)
  assert_one_line_error(result, f'model.score_restore_path = {missing} does not exist', 'relative to the current')
  assert_leaves_nothing(root, 'failed_start')
  corrected = run_tiny_classifier(root, 'failed_start', score_run_folder / 'checkpoints' / 'checkpoint_4.pth')
  assert corrected.returncode == 0, corrected.stderr[-3000:]
  assert (root / 'results' / 'failed_start' / 'config.txt').read_text().count('# ---- start') == 1


def test_a_failed_start_in_an_existing_run_folder_changes_none_of_its_files(root):
  """No config.txt entry, no log line, no TensorBoard file for a start that could not load its data."""
  before = files_under(root / 'results' / 'prev')
  result = run_main(root, SCORE_CONFIG, 'score', 'prev', '--data_dir=nowhere', *TINY_SCORE, *schedule(1, 1))
  assert_one_line_error(result, 'cifar-10-batches-py')
  assert files_under(root / 'results' / 'prev') == before


def test_ctrl_c_during_training_is_one_line_and_the_same_command_resumes(root):
  """SIGINT (what Ctrl-C sends) ends with status 130, one line naming the checkpoint to resume from, no traceback."""
  args = ['--data_dir=data', *TINY_SCORE, *schedule(n_iters=80, snapshot_freq=2, log_freq=5, eval_freq=100)]
  run_dir = root / 'results' / 'interrupted'
  process = subprocess.Popen(main_command(SCORE_CONFIG, 'score', 'interrupted', *args), cwd=root, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None and not (run_dir / 'checkpoints' / 'checkpoint_2.pth').exists():
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == plumbing.INTERRUPTED_STATUS, stderr[-3000:]
  assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith('interrupted (Ctrl-C)')]
  assert len(lines) == 1 and 'rerun the same command to resume from results/interrupted/checkpoints/checkpoint_' \
      in lines[0], stderr[-3000:]
  resume_from = lines[0].rsplit(' ', 1)[1]
  assert (root / resume_from).is_file() and not list(run_dir.rglob('*.tmp'))
  rerun = run_main(root, SCORE_CONFIG, 'score', 'interrupted', *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'Resumed from {resume_from}' in (run_dir / 'log.txt').read_text()
  assert (run_dir / 'checkpoints' / 'checkpoint_81.pth').is_file()


def bar_counts(stderr, description):
  """Every count that the tqdm bar `description` showed (its redraws are separated by carriage returns)."""
  return [int(match) for match in re.findall(rf'{description}:\s+\d+%\|[^|]*\|\s*(\d+)/\d+', stderr)]


def test_cas_without_samples_is_one_line_and_the_cas_bar_counts_its_steps(tmp_path):
  write_cifar_folder(tmp_path / 'data', 'CIFAR10', num_train=48, num_test=32)
  command = [sys.executable, str(REPO_ROOT / 'run_lib_cas.py'), '--config', CAS_CONFIG, '--workdir', 'nowhere',
             '--data_dir', 'data']
  result = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
  assert_one_line_error(result, 'results/nowhere/eval_samples does not exist', '--samples_dir')
  assert not (tmp_path / 'results').exists()
  write_samples(tmp_path / 'samples')
  corrected = run_cas(tmp_path, 'resnet10', 4)  # evaluates after updates 1, 3 and 4
  assert corrected.returncode == 0, corrected.stderr[-3000:]
  assert {1, 3, 4} <= set(bar_counts(corrected.stderr, 'CAS')), corrected.stderr[-3000:]
