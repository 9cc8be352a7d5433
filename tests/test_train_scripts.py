"""main.py end to end on a CIFAR-format folder the tests write: tiny score model -> checkpoint -> classifier with
--restore, resume after SIGKILL, a 2-process gloo torchrun run, one run per workdir, corrupt checkpoints, a full disk,
and the clear errors (exit code 1)."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from tests.cifar_fixture import write_cifar_folder
from tests.helpers import REPO_ROOT

MAIN = str(REPO_ROOT / 'main.py')
SCORE_CONFIG = str(REPO_ROOT / 'configs/score/cifar10_score_configs.py')
CLASSIFIER_CONFIG = str(REPO_ROOT / 'configs/classifier/cifar10_classifier_resnet18_cond_configs.py')
TINY_SCORE = ['--config.model.nf=8', '--config.model.num_res_blocks=1', '--config.model.ch_mult=(1,2)',
              '--config.training.batch_size=4', '--config.training.snapshot_sampling=False']
TINY_CLASSIFIER = TINY_SCORE[:3] + ['--config.training.batch_size=4', '--config.classifier.resnet_base_width=4',
                                    '--config.classifier.nf=8', '--config.eval.batch_size=16']


def schedule(n_iters, snapshot_freq, log_freq=1, eval_freq=2):
  return [f'--config.training.n_iters={n_iters}', f'--config.training.snapshot_freq={snapshot_freq}',
          f'--config.training.log_freq={log_freq}', f'--config.training.eval_freq={eval_freq}']


def environment():
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
  env.pop('WORLD_SIZE', None)
  return env


def main_command(config, model, workdir, *extra, launcher=(sys.executable,)):
  return [*launcher, MAIN, f'--config={config}', f'--model={model}', f'--workdir={workdir}', *extra]


def run_main(cwd, config, model, workdir, *extra, launcher=(sys.executable,), timeout=300, preexec_fn=None):
  return subprocess.run(main_command(config, model, workdir, *extra, launcher=launcher), cwd=cwd, env=environment(),
                        capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def assert_ok(result):
  assert result.returncode == 0, result.stderr[-3000:]


def assert_clear_failure(result, *fragments):
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-3000:]


def checkpoint_steps(run_dir):
  names = os.listdir(os.path.join(run_dir, 'checkpoints'))
  return sorted(int(name[len('checkpoint_'):-len('.pth')]) for name in names if name.endswith('.pth'))


def load(path):
  from models.checkpoint import load_checkpoint_file
  return load_checkpoint_file(path, 'cpu')


def adam_steps(checkpoint):
  return {int(state['step']) for state in checkpoint['optimizer']['state'].values()}


def tensorboard_tags(log_dir):
  """Scalar tags and steps, read in a subprocess without TensorFlow (tensorboard's stub)."""
  code = ("import json, sys, types; sys.modules['tensorboard.compat.notf'] = types.ModuleType('notf');"
          "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator;"
          f"acc = EventAccumulator({str(log_dir)!r}); acc.Reload();"
          "print(json.dumps({tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}))")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=environment(), timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  write_cifar_folder(root / 'data', 'CIFAR10', num_train=48, num_test=32)
  return root


@pytest.fixture(scope='module')
def score_run(cifar_root):
  """A 4-update tiny score run (n_iters=3): checkpoints after 2 and 4 updates. A repeated tuple override: the last
  one wins (the classifier test below restores it with ch_mult (1, 2))."""
  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'score_tiny', '--data_dir=data',
                    '--config.model.ch_mult=(1,1,1)', *TINY_SCORE,
                    *schedule(n_iters=3, snapshot_freq=2))
  assert_ok(result)
  return cifar_root / 'results' / 'score_tiny'


def test_score_run_writes_checkpoints_log_and_tensorboard(score_run):
  assert checkpoint_steps(score_run) == [2, 4]  # named by completed updates; n_iters + 1 updates (B26, B27)
  final = load(score_run / 'checkpoints' / 'checkpoint_4.pth')
  assert list(final) == ['optimizer', 'model', 'step', 'ema']
  assert final['step'] == 4 and final['ema']['num_updates'] == 4 and adam_steps(final) == {4}
  assert all(key.startswith('module.') for key in final['model'])
  log = (score_run / 'log.txt').read_text()
  assert 'step: 3, training_loss:' in log and 'eval_loss' in log
  tags = tensorboard_tags(score_run / 'tensorboard')
  assert tags['training_loss'] == [0, 1, 2, 3] and tags['eval_loss'] == [0, 2] and 'lr' in tags


def test_classifier_trains_with_restored_score_model(score_run, cifar_root):
  restore = score_run / 'checkpoints' / 'checkpoint_4.pth'
  result = run_main(cifar_root, CLASSIFIER_CONFIG, 'classifier', 'classifier_tiny', '--data_dir=data',
                    f'--restore={restore}', *TINY_CLASSIFIER, *schedule(n_iters=2, snapshot_freq=2))
  assert_ok(result)
  run_dir = cifar_root / 'results' / 'classifier_tiny'
  assert checkpoint_steps(run_dir) == [2, 3]
  final = load(run_dir / 'checkpoints' / 'checkpoint_3.pth')
  assert list(final) == ['optimizer', 'model', 'step'] and final['step'] == 3 and adam_steps(final) == {3}
  log = (run_dir / 'log.txt').read_text()
  assert f'Score model restored from {restore}' in log and 'step: 2, eval_acc:' in log
  tags = tensorboard_tags(run_dir / 'tensorboard')
  assert tags['loss'] == [0, 1, 2] and tags['eval_acc'] == [0, 2]


def test_resume_after_sigkill_continues_at_the_right_step(cifar_root):
  args = ['--data_dir=data', *TINY_SCORE, *schedule(n_iters=15, snapshot_freq=2, log_freq=5, eval_freq=100)]
  run_dir = cifar_root / 'results' / 'score_killed'
  process = subprocess.Popen(main_command(SCORE_CONFIG, 'score', 'score_killed', *args), cwd=cifar_root,
                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  try:
    while time.time() < deadline and process.poll() is None:
      if os.path.isdir(run_dir / 'checkpoints') and checkpoint_steps(run_dir):
        break
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait()
  assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  killed_at = checkpoint_steps(run_dir)[-1]
  assert killed_at < 16
  before = load(run_dir / 'checkpoints' / f'checkpoint_{killed_at}.pth')

  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'score_killed', *args)
  assert_ok(result)
  steps = checkpoint_steps(run_dir)
  assert steps[-1] == 16 and steps == sorted(set(steps))
  log = (run_dir / 'log.txt').read_text()
  assert f'checkpoint_{killed_at}.pth (step {killed_at})' in log
  resumed = load(run_dir / 'checkpoints' / f'checkpoint_{killed_at}.pth')
  assert all(torch.equal(before['model'][k], resumed['model'][k]) for k in before['model'])  # not overwritten
  final = load(run_dir / 'checkpoints' / 'checkpoint_16.pth')
  # Adam and EMA counted every update of both processes: their state was restored, not restarted.
  assert final['step'] == 16 and adam_steps(final) == {16} and final['ema']['num_updates'] == 16


def test_torchrun_two_processes_gloo_writes_a_loadable_checkpoint(score_run, cifar_root):
  from models import checkpoint, utils
  from tests.helpers import load_config
  restore = score_run / 'checkpoints' / 'checkpoint_4.pth'
  launcher = (sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2')
  result = run_main(cifar_root, CLASSIFIER_CONFIG, 'classifier', 'classifier_ddp', '--data_dir=data',
                    f'--restore={restore}', *TINY_CLASSIFIER, *schedule(n_iters=2, snapshot_freq=10),
                    launcher=launcher)
  assert_ok(result)
  run_dir = cifar_root / 'results' / 'classifier_ddp'
  assert checkpoint_steps(run_dir) == [3]
  assert len(os.listdir(run_dir / 'tensorboard')) == 1  # rank 0 only
  assert '2 process(es)' in (run_dir / 'log.txt').read_text()
  config = load_config('configs/classifier/cifar10_classifier_resnet18_cond_configs.py')
  config.device, config.classifier.resnet_base_width, config.classifier.nf = 'cpu', 4, 8
  classifier = utils.create_classifier(config)
  optimizer = torch.optim.Adam(classifier.parameters())
  step = checkpoint.restore_training_state(str(run_dir / 'checkpoints' / 'checkpoint_3.pth'), classifier, optimizer)
  assert step == 3 and adam_steps({'optimizer': optimizer.state_dict()}) == {3}


def test_missing_data_folder_is_a_clear_error(tmp_path):
  result = run_main(tmp_path, SCORE_CONFIG, 'score', 'no_data', f'--data_dir={tmp_path / "nowhere"}', *TINY_SCORE,
                    *schedule(1, 1))
  assert_clear_failure(result, 'cifar-10-batches-py', 'cifar-10-python.tar.gz')


def test_missing_restore_file_is_a_clear_error(cifar_root):
  result = run_main(cifar_root, CLASSIFIER_CONFIG, 'classifier', 'no_restore', '--data_dir=data',
                    '--restore=results/none/checkpoint_9.pth', *TINY_CLASSIFIER, *schedule(1, 1))
  assert_clear_failure(result, 'results/none/checkpoint_9.pth')


def test_config_restore_path_is_used_without_the_flag(cifar_root):
  """B2: without --restore the config's model.score_restore_path (results/checkpoint.pth) is what gets loaded."""
  result = run_main(cifar_root, CLASSIFIER_CONFIG, 'classifier', 'config_restore', '--data_dir=data',
                    *TINY_CLASSIFIER, *schedule(1, 1))
  assert_clear_failure(result, 'results/checkpoint.pth')


def test_wrong_architecture_checkpoint_is_a_clear_error(score_run, cifar_root):
  wider = [arg.replace('nf=8', 'nf=16') if arg.startswith('--config.model.nf') else arg for arg in TINY_CLASSIFIER]
  result = run_main(cifar_root, CLASSIFIER_CONFIG, 'classifier', 'wrong_arch', '--data_dir=data',
                    f'--restore={score_run / "checkpoints" / "checkpoint_4.pth"}', *wider, *schedule(1, 1))
  assert_clear_failure(result, 'does not fit', 'model.nf')


def test_unknown_model_flag_fails(tmp_path):
  result = run_main(tmp_path, SCORE_CONFIG, 'scorer', 'bad_flag')
  assert result.returncode != 0 and "--model" in result.stderr and 'score' in result.stderr


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(cifar_root):
  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'diverged', '--data_dir=data', *TINY_SCORE,
                    *schedule(n_iters=5, snapshot_freq=1, eval_freq=100), '--config.optim.lr=1e30',
                    '--config.optim.warmup=0')
  assert_clear_failure(result, 'nan at step 1', 'checkpoint_1.pth')
  run_dir = cifar_root / 'results' / 'diverged'
  assert checkpoint_steps(run_dir) == [1]
  assert all(torch.isfinite(v).all() for v in load(run_dir / 'checkpoints' / 'checkpoint_1.pth')['model'].values())


def test_training_modules_do_not_import_tensorflow(tmp_path):
  code = ('import sys, main, run_lib, losses, datasets;'
          f'writer = run_lib.tensorboard_writer({str(tmp_path)!r}); writer.add_scalar("x", 1.0, 0); writer.close();'
          'assert "tensorflow" not in sys.modules, "tensorflow was imported"')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=environment(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_toy_trains_through_the_same_trainers(tmp_path):
  """The moons (data.dataset='moons') go through run_lib's trainers (eps=0, σ-power weights); runs are seeded (B30)."""
  import run_lib
  from tests.helpers import load_config

  def tiny(path, n_iters):
    config = load_config(path)
    config.device = 'cpu'
    config.training.n_iters, config.training.batch_size = n_iters, 500
    config.training.snapshot_freq = config.training.log_freq = config.training.eval_freq = 10
    return config

  run_lib.train_score(tiny('configs/toy/score.py', 19), str(tmp_path / 'toy_score'))
  assert checkpoint_steps(tmp_path / 'toy_score') == [10, 20]
  run_lib.train_score(tiny('configs/toy/score.py', 19), str(tmp_path / 'toy_score_again'))
  first, again = (load(tmp_path / name / 'checkpoints' / 'checkpoint_20.pth')
                  for name in ('toy_score', 'toy_score_again'))
  assert all(torch.equal(first['model'][k], again['model'][k]) for k in first['model'])  # config.seed fixes the run
  classifier_config = tiny('configs/toy/classifier_total.py', 9)
  classifier_config.model.score_restore_path = str(tmp_path / 'toy_score' / 'checkpoints' / 'checkpoint_20.pth')
  run_lib.train_classifier(classifier_config, str(tmp_path / 'toy_total'))
  final = load(tmp_path / 'toy_total' / 'checkpoints' / 'checkpoint_10.pth')
  assert final['step'] == 10 and adam_steps(final) == {10}
  log = (tmp_path / 'toy_total' / 'log.txt').read_text()
  assert 'Classifier training (total loss)' in log and 'step: 0, eval_acc:' in log


# ---------------------------------------------------------------------------------------------
# One run per workdir, corrupt checkpoints, a full disk, interrupted snapshots.


def one_error_line(result, *fragments):
  assert_clear_failure(result, *fragments)
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), result.stderr[-3000:]


def test_two_runs_started_together_on_one_workdir_one_fails_at_once_the_other_finishes(cifar_root):
  args = ['--data_dir=data', *TINY_SCORE, *schedule(n_iters=30, snapshot_freq=100, log_freq=100, eval_freq=100)]
  runs = [subprocess.Popen(main_command(SCORE_CONFIG, 'score', 'twice', *args), cwd=cifar_root, env=environment(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [(run, run.communicate(timeout=600)[1]) for run in runs]
  (winner, winner_stderr), = [(run, stderr) for run, stderr in results if run.returncode == 0]
  (loser, loser_stderr), = [(run, stderr) for run, stderr in results if run is not winner]
  one_error_line(subprocess.CompletedProcess(loser.args, loser.returncode, '', loser_stderr),
                 'results/twice is in use by pid', f'pid {winner.pid} on host')
  assert 'Resumed' not in winner_stderr and 'Nothing to do' not in winner_stderr
  assert checkpoint_steps(cifar_root / 'results' / 'twice') == [31]
  final = load(cifar_root / 'results' / 'twice' / 'checkpoints' / 'checkpoint_31.pth')
  assert final['step'] == 31 and adam_steps(final) == {31} and final['ema']['num_updates'] == 31
  assert not (cifar_root / 'results' / 'twice' / 'run.lock').exists()


def flip_tensor_byte(path):
  """Invert one byte inside the first tensor record of a torch zip archive."""
  with zipfile.ZipFile(path) as archive:
    info = next(i for i in archive.infolist() if '/data/' in i.filename and i.file_size > 64)
  content = bytearray(path.read_bytes())
  name_length, extra_length = (int.from_bytes(content[info.header_offset + o:info.header_offset + o + 2], 'little')
                               for o in (26, 28))
  content[info.header_offset + 30 + name_length + extra_length + info.file_size // 2] ^= 0xFF
  path.write_bytes(bytes(content))


def test_resume_skips_a_corrupt_checkpoint_cleans_temp_files_and_applies_a_changed_lr(score_run, cifar_root):
  run_dir = cifar_root / 'results' / 'fallback'
  shutil.copytree(score_run / 'checkpoints', run_dir / 'checkpoints')
  (run_dir / 'config.txt').write_text('an earlier start\n')
  flip_tensor_byte(run_dir / 'checkpoints' / 'checkpoint_4.pth')
  leftover = run_dir / 'checkpoints' / '.checkpoint_6.pth.99999999.0123abcd.tmp'  # its writer is long gone
  leftover.write_bytes(b'')
  kept = (run_dir / 'checkpoints' / 'checkpoint_2.pth').read_bytes()
  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'fallback', '--data_dir=data', *TINY_SCORE,
                    *schedule(n_iters=3, snapshot_freq=2), '--config.optim.warmup=0', '--config.optim.lr=1e-3')
  assert_ok(result)
  log = (run_dir / 'log.txt').read_text()
  assert 'checkpoint_4.pth is corrupt' in log and 'CRC-32' in log and 'falling back' in log
  assert 'checkpoint_2.pth (step 2)' in log and 'optim: lr was' in log
  assert (run_dir / 'checkpoints' / 'checkpoint_2.pth').read_bytes() == kept and not leftover.exists()
  final = load(run_dir / 'checkpoints' / 'checkpoint_4.pth')  # rewritten, verified by load
  assert final['step'] == 4 and final['optimizer']['param_groups'][0]['lr'] == 1e-3
  history = (run_dir / 'config.txt').read_text()
  assert history.startswith('an earlier start\n') and history.count('# ---- start') == 1


@pytest.mark.parametrize('damage', ['empty', 'truncated', 'bit flip', 'not a checkpoint'])
def test_a_damaged_restore_checkpoint_is_one_line_naming_it(score_run, tmp_path, damage):
  path = tmp_path / 'score.pth'
  shutil.copy(score_run / 'checkpoints' / 'checkpoint_4.pth', path)
  content = path.read_bytes()
  if damage == 'bit flip':
    flip_tensor_byte(path)
  else:
    path.write_bytes({'empty': b'', 'truncated': content[:len(content) // 3], 'not a checkpoint': b'hello'}[damage])
  expected = {'empty': 'is empty', 'truncated': 'is truncated', 'bit flip': 'CRC-32',
              'not a checkpoint': 'cannot be read as a checkpoint'}[damage]
  result = run_main(tmp_path, CLASSIFIER_CONFIG, 'classifier', 'damaged', f'--restore={path}', *TINY_CLASSIFIER,
                    *schedule(1, 1))
  one_error_line(result, str(path), expected)


def test_a_full_disk_is_one_line_and_keeps_the_checkpoints(score_run, cifar_root):
  """RLIMIT_FSIZE stands in for a full disk: a write past the limit fails (EFBIG) as one past the free space would."""
  run_dir = cifar_root / 'results' / 'full_disk'
  shutil.copytree(score_run / 'checkpoints', run_dir / 'checkpoints')
  before = {name: (run_dir / 'checkpoints' / name).read_bytes() for name in os.listdir(run_dir / 'checkpoints')}
  limit = (run_dir / 'checkpoints' / 'checkpoint_4.pth').stat().st_size // 2
  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'full_disk', '--data_dir=data', *TINY_SCORE,
                    *schedule(n_iters=5, snapshot_freq=2),
                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
  one_error_line(result, 'checkpoint_6.pth', 'cannot write', 'File too large')
  after = {name: (run_dir / 'checkpoints' / name).read_bytes() for name in os.listdir(run_dir / 'checkpoints')}
  assert after == before


def test_a_snapshot_lost_to_a_kill_is_made_on_restart(cifar_root):
  args = ['--data_dir=data', *TINY_SCORE, '--config.training.snapshot_sampling=True', '--config.model.num_scales=4',
          *schedule(n_iters=1, snapshot_freq=1, eval_freq=100)]
  assert_ok(run_main(cifar_root, SCORE_CONFIG, 'score', 'snapshots', *args))
  samples = cifar_root / 'results' / 'snapshots' / 'samples'
  assert sorted(os.listdir(samples)) == ['iter_1', 'iter_2']
  shutil.rmtree(samples / 'iter_2')  # as a kill between checkpoint_2.pth and its samples leaves it
  result = run_main(cifar_root, SCORE_CONFIG, 'score', 'snapshots', *args)
  assert_ok(result)
  assert sorted(os.listdir(samples / 'iter_2')) == ['sample.npy', 'sample.png']
  remade = np.load(samples / 'iter_2' / 'sample.npy')
  assert remade.shape == (4, 32, 32, 3) and remade.dtype == np.uint8
  assert 'Nothing to do' in (cifar_root / 'results' / 'snapshots' / 'log.txt').read_text()


def test_vp_sde_trains_and_samples_from_the_command_line(tmp_path):
  """The :vpsde configs for score, classifier and sampling (a Fourier embedding and N = 4 keep it tiny)."""
  write_cifar_folder(tmp_path / 'data', 'CIFAR10', num_train=48, num_test=32)
  small = ['--config.model.embedding_type=fourier', '--config.model.num_scales=4']
  assert_ok(run_main(tmp_path, f'{SCORE_CONFIG}:vpsde', 'score', 'vp_score', '--data_dir=data', *TINY_SCORE, *small,
                     *schedule(n_iters=1, snapshot_freq=2)))
  score = tmp_path / 'results' / 'vp_score' / 'checkpoints' / 'checkpoint_2.pth'
  assert_ok(run_main(tmp_path, f'{CLASSIFIER_CONFIG}:vpsde', 'classifier', 'vp_classifier', '--data_dir=data',
                     f'--restore={score}', *TINY_CLASSIFIER, *small, *schedule(n_iters=1, snapshot_freq=2)))
  classifier = tmp_path / 'results' / 'vp_classifier' / 'checkpoints' / 'checkpoint_2.pth'
  tiny = ['--config.model.nf=8', '--config.model.num_res_blocks=1', '--config.model.ch_mult=(1,2)',
          '--config.classifier.resnet_base_width=4', '--config.classifier.nf=8', '--config.training.batch_size=2',
          '--config.eval.num_samples=20', '--config.device=cpu', *small]
  result = subprocess.run([sys.executable, str(REPO_ROOT / 'run_lib_sampling.py'),
                           f'--config={REPO_ROOT / "configs/eval/cifar10/eval_cifar10_configs.py"}:vpsde', *tiny,
                           '--workdir=vp_samples', '--mode=class', '--classid=1', f'--restore={score}',
                           f'--restore_classifier={classifier}'], cwd=tmp_path, env=environment(), capture_output=True,
                          text=True, timeout=300)
  assert_ok(result)
  folder = tmp_path / 'results' / 'vp_samples' / 'eval_samples'
  with np.load(folder / '1' / 'samples_0.npz') as archive:
    assert archive['samples'].shape == (2, 32, 32, 3) and archive['samples'].dtype == np.uint8
  settings = json.loads((folder / 'settings.json').read_text())
  assert settings['training.sde'] == 'vpsde' and settings['sampling.predictor'] == 'euler_maruyama'
