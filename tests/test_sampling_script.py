"""run_lib_sampling.py end to end on tiny checkpoints: class ranges, sharding, resumption, the settings record, refused
settings, non-finite samples, clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fileio
import plumbing
import run_lib_sampling as rls
from tests.helpers import REPO_ROOT, default_sigint, load_config

EVAL_CONFIG = 'configs/eval/cifar10/eval_cifar10_configs.py'
# Tiny networks, 3 PC steps, batches of 2 and (40 // 2) // 10 = 2 rounds per class. The script runs on the CPU
# (DLSM_TEST_DEVICE=cuda runs it on a GPU instead).
TINY = {'model.nf': 8, 'model.num_res_blocks': 1, 'model.num_scales': 3, 'classifier.resnet_base_width': 4,
        'classifier.nf': 8, 'training.batch_size': 2, 'eval.num_samples': 40,
        'device': os.environ.get('DLSM_TEST_DEVICE', 'cpu')}
SAMPLE_SHAPE = (2, 32, 32, 3)


def tiny_config():
  config = load_config(EVAL_CONFIG)
  for key, value in {**TINY, 'device': 'cpu'}.items():
    *sections, field = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """Tiny score (with EMA) and classifier checkpoints written by the project's checkpoint writer."""
  from models import checkpoint, utils as mutils
  from models.ema import ExponentialMovingAverage
  folder = tmp_path_factory.mktemp('checkpoints')
  config = tiny_config()
  torch.manual_seed(0)
  score_model = mutils.create_model(config)
  with torch.no_grad():  # leave no zero-initialised layer: the samples must depend on the network
    for param in score_model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  ema = ExponentialMovingAverage(score_model.parameters(), decay=0.999)
  checkpoint.save_checkpoint(str(folder / 'score.pth'), score_model, step=1, ema=ema)
  checkpoint.save_checkpoint(str(folder / 'classifier.pth'), mutils.create_classifier(config), step=1)
  return {'score': str(folder / 'score.pth'), 'classifier': str(folder / 'classifier.pth')}


def sampler_command(checkpoints, *args, restore=True, config=EVAL_CONFIG):
  command = [sys.executable, str(REPO_ROOT / 'run_lib_sampling.py'), f'--config={REPO_ROOT / config}',
             *[f'--config.{key}={value}' for key, value in TINY.items()], '--workdir=tiny', *args]
  if restore:
    command += [f'--restore={checkpoints["score"]}', f'--restore_classifier={checkpoints["classifier"]}']
  return command


def sampler_env(env=None):
  return {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1', **(env or {})}


def run_sampler(cwd, checkpoints, *args, restore=True, env=None, config=EVAL_CONFIG):
  return subprocess.run(sampler_command(checkpoints, *args, restore=restore, config=config), cwd=cwd,
                        env=sampler_env(env), capture_output=True, text=True, timeout=600)


def sample_files(cwd):
  root = cwd / 'results' / 'tiny' / 'eval_samples'
  return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


@pytest.fixture(scope='module')
def one_run(tmp_path_factory, checkpoints):
  """Classes 3 and 4 (--classidend is exclusive) in one process."""
  cwd = tmp_path_factory.mktemp('one_run')
  result = run_sampler(cwd, checkpoints, '--mode=class', '--classid=3', '--classidend=5')
  assert result.returncode == 0, result.stderr
  return cwd


def test_class_range_is_end_exclusive_and_files_are_the_originals_format(one_run):
  files = sample_files(one_run)
  assert sorted(files) == [f'{c}/samples_{r}.{ext}' for c in (3, 4) for r in (0, 1) for ext in ('npz', 'png')] + [
      rls.SETTINGS_FILE]
  for name in files:
    path = one_run / 'results' / 'tiny' / 'eval_samples' / name
    if name.endswith('.npz'):
      with np.load(path) as archive:
        assert list(archive.keys()) == ['samples', 'nfe']
        samples, nfe = archive['samples'], archive['nfe']
      assert nfe == 6  # 3 PC steps, each a corrector and a predictor evaluation
      assert samples.dtype == np.uint8 and samples.shape == SAMPLE_SHAPE
      assert len(np.unique(samples)) > 10  # real images, not a constant
    elif name.endswith('.png'):
      assert Image.open(path).size == (32 + 2 * 2, 2 * 32 + 3 * 2)  # nrow = int(sqrt(2)) = 1, padding 2
  # Different (class, round) batches have different seeds.
  assert files['3/samples_0.npz'] != files['3/samples_1.npz'] != files['4/samples_0.npz']


def test_two_shards_write_the_same_bytes_as_one_run(tmp_path, checkpoints, one_run):
  for args in (['--mode=class', '--classid=4', '--classidend=5'], ['--mode=class', '--classid=3']):
    result = run_sampler(tmp_path, checkpoints, *args)
    assert result.returncode == 0, result.stderr
  assert sample_files(tmp_path) == sample_files(one_run)


def test_a_torchrun_rank_writes_exactly_its_share(tmp_path, checkpoints, one_run):
  rank_env = {'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '1'}  # what torchrun sets
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', '--classidend=5', env=rank_env)
  assert result.returncode == 0, result.stderr
  share = {name: content for name, content in sample_files(one_run).items()
           if name.split('.')[0] in ('3/samples_1', '4/samples_1')}  # work items 1 and 3 of [(3,0),(3,1),(4,0),(4,1)]
  assert sample_files(tmp_path) == share


def test_rerun_skips_complete_files_and_redoes_a_truncated_one(tmp_path, checkpoints, one_run):
  reference = sample_files(one_run)
  folder = tmp_path / 'results' / 'tiny' / 'eval_samples'
  for name, content in reference.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
  truncated = folder / '4' / 'samples_1.npz'
  truncated.write_bytes(reference['4/samples_1.npz'][:300])  # what a kill during a plain write leaves
  untouched = {name: (folder / name).stat().st_mtime_ns for name in reference
               if not name.startswith('4/samples_1.')}
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', '--classidend=5')
  assert result.returncode == 0, result.stderr
  assert ': 1 batches of 2 left' in result.stderr
  assert ('pc reverse_diffusion/langevin (snr=0.16, n_steps_each=1, probability_flow=False) on the linear grid, '
          '3 steps, 6 NFE') in result.stderr  # the start line names the sampler, its grid, steps and NFE
  assert sample_files(tmp_path) == reference
  assert {name: (folder / name).stat().st_mtime_ns for name in untouched} == untouched
  assert not [p for p in folder.rglob('*.tmp')]
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', '--classidend=5')
  assert result.returncode == 0 and ': 0 batches of 2 left' in result.stderr


def test_a_bad_class_range_fails_clearly(tmp_path, checkpoints):
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=9', '--classidend=11')
  assert result.returncode == 1
  assert 'need 0 <= classid < classidend <= 10 (classidend is exclusive' in result.stderr
  assert 'Traceback' not in result.stderr and not (tmp_path / 'results').exists()


def test_missing_or_wrong_checkpoints_fail_clearly(tmp_path, checkpoints):
  result = run_sampler(tmp_path, checkpoints, '--mode=class', restore=False)
  assert result.returncode == 1 and 'No model.score_restore_path: pass --restore' in result.stderr
  missing = str(tmp_path / 'nope.pth')
  result = run_sampler(tmp_path, checkpoints, '--mode=class', f'--restore={missing}',
                       f'--restore_classifier={checkpoints["classifier"]}', restore=False)
  assert result.returncode == 1 and f'{missing} does not exist' in result.stderr
  swapped = run_sampler(tmp_path, checkpoints, '--mode=class', f'--restore={checkpoints["classifier"]}',
                        f'--restore_classifier={checkpoints["classifier"]}', restore=False)
  assert swapped.returncode == 1 and 'score model' in swapped.stderr and 'Traceback' not in swapped.stderr


def one_error_line(result, *fragments):
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), result.stderr[-3000:]


def copy_samples(source, cwd):
  folder = cwd / 'results' / 'tiny' / 'eval_samples'
  for name, content in sample_files(source).items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
  return folder


def test_other_settings_are_refused_and_fresh_moves_the_old_samples_aside(tmp_path, checkpoints, one_run):
  """The original README's two commands in one workdir: --scale 10 never passes the λ = 1 files off as its own."""
  copy_samples(one_run, tmp_path)
  before = sample_files(tmp_path)
  refused = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', '--classidend=5', '--scale=10')
  one_error_line(refused, 'sampling.scaling_factor 1.0 -> 10.0', 'another --workdir', '--fresh')
  assert sample_files(tmp_path) == before
  fresh = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', '--scale=10', '--fresh')
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  run_dir = tmp_path / 'results' / 'tiny'
  aside = [name for name in os.listdir(run_dir) if name.startswith('eval_samples.')]
  assert len(aside) == 1
  moved = run_dir / aside[0]
  assert {str(p.relative_to(moved)): p.read_bytes() for p in moved.rglob('*') if p.is_file()} == before
  after = sample_files(tmp_path)
  assert sorted(after) == ['3/samples_0.npz', '3/samples_0.png', '3/samples_1.npz', '3/samples_1.png',
                           rls.SETTINGS_FILE]
  assert after['3/samples_0.npz'] != before['3/samples_0.npz']
  assert json.loads(after[rls.SETTINGS_FILE])['sampling.scaling_factor'] == 10.0


def test_non_finite_samples_are_never_written(tmp_path, checkpoints):
  from models import checkpoint, utils as mutils
  from models.ema import ExponentialMovingAverage
  score_model = mutils.create_model(tiny_config())
  with torch.no_grad():
    next(score_model.parameters()).fill_(float('nan'))
  nan_path = str(tmp_path / 'nan_score.pth')
  checkpoint.save_checkpoint(nan_path, score_model, step=1, ema=ExponentialMovingAverage(score_model.parameters(), 0.9))
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', f'--restore={nan_path}',
                       f'--restore_classifier={checkpoints["classifier"]}', restore=False)
  one_error_line(result, 'class 3 round 0', 'non-finite', 'vesde N=3', 'nothing was written')
  assert not list((tmp_path / 'results' / 'tiny' / 'eval_samples').rglob('*.np*'))


BOTH_CHECKPOINTS = ['--restore={score}', '--restore_classifier={classifier}']
FAILED_STARTS = {
    'a classifier checkpoint as the score model': (['--restore={classifier}', '--restore_classifier={classifier}'],
                                                   'score model'),
    'a predictor typo': (BOTH_CHECKPOINTS + ['--config.sampling.predictor=reverse_difusion'],
                         "unknown predictor 'reverse_difusion'"),
    'an unknown grid': (BOTH_CHECKPOINTS + ['--config.sampling.grid=rh0'],
                        "sampling.grid='rh0': must be one of 'linear', 'logsnr', 'rho'"),
    'a folder as the score checkpoint': (['--restore={folder}', '--restore_classifier={classifier}'],
                                         'is a folder, not a checkpoint file'),
}


def test_failed_starts_write_nothing_and_never_block_the_corrected_command(tmp_path, checkpoints):
  """Each failure is one line and leaves no results/ folder; then the corrected command samples (no settings.json
  of a failed start makes it refuse 'samples made with other settings')."""
  folder = os.path.dirname(checkpoints['score'])
  for case, (args, fragment) in FAILED_STARTS.items():
    args = [arg.format(folder=folder, **checkpoints) for arg in args]
    one_error_line(run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3', *args, restore=False), fragment)
    assert not (tmp_path / 'results').exists(), case
  corrected = run_sampler(tmp_path, checkpoints, '--mode=class', '--classid=3')
  assert corrected.returncode == 0, corrected.stderr[-3000:]
  assert sorted(sample_files(tmp_path)) == ['3/samples_0.npz', '3/samples_0.png', '3/samples_1.npz',
                                            '3/samples_1.png', rls.SETTINGS_FILE]


def test_ctrl_c_during_sampling_is_one_line_and_the_same_command_resumes(tmp_path, checkpoints):
  import signal
  import time
  command = sampler_command(checkpoints, '--mode=full')
  folder = tmp_path / 'results' / 'tiny' / 'eval_samples'
  process = subprocess.Popen(command, cwd=tmp_path, env=sampler_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not (folder / '0' / 'samples_0.npz').exists():
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == plumbing.INTERRUPTED_STATUS and 'Traceback' not in stderr, stderr[-3000:]
  assert [line for line in stderr.splitlines() if line.startswith('interrupted (Ctrl-C)')] == [
      'interrupted (Ctrl-C); rerun the same command to resume: the complete sample files are kept'], stderr[-3000:]
  assert not list(folder.rglob('*.tmp'))
  rerun = subprocess.run(command, cwd=tmp_path, env=sampler_env(), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert len(list(folder.rglob('*.npz'))) == 20


REFUSED_SETTINGS = {
    'ancestral + probability flow': (EVAL_CONFIG, ['--config.sampling.predictor=ancestral_sampling',
                                                   '--config.sampling.probability_flow=True'], 'probability-flow'),
    'ancestral + sub-VP': (f'{EVAL_CONFIG}:subvpsde', ['--config.sampling.predictor=ancestral_sampling',
                                                       '--config.model.num_scales=1000'], 'has no ancestral step'),
    'VP table reaching beta 1': (f'{EVAL_CONFIG}:vpsde', [
        '--config.sampling.predictor=ancestral_sampling', '--config.model.num_scales=20',
        '--config.training.continuous=False'], 'β = model.beta_max / num_scales = 1'),
    'VP grid of sampling.num_steps reaching beta 1': (f'{EVAL_CONFIG}:vpsde', [
        '--config.sampling.predictor=reverse_diffusion', '--config.model.num_scales=1000',
        '--config.sampling.num_steps=20'], 'sampling.num_steps=20: the VP step table reaches β = model.beta_max / '
                                           'num_steps = 1'),
    'positional embedding, 20 scales': (f'{EVAL_CONFIG}:vpsde', ['--config.model.num_scales=20'], '999·t'),
    'negative scale': (EVAL_CONFIG, ['--scale=-1'], 'sampling.scaling_factor=-1.0'),
    'ODE tolerance': (EVAL_CONFIG, ['--config.sampling.method=ode', '--config.sampling.ode_rtol=0'],
                      'sampling.ode_rtol=0'),
}


@pytest.mark.parametrize('case', sorted(REFUSED_SETTINGS))
def test_settings_that_cannot_work_are_refused_before_any_model_loads(tmp_path, checkpoints, case):
  """No checkpoint is passed: a check after model loading would complain about the missing score checkpoint."""
  config, args, fragment = REFUSED_SETTINGS[case]
  result = run_sampler(tmp_path, checkpoints, '--mode=class', *args, restore=False, config=config)
  one_error_line(result, fragment)
  assert not (tmp_path / 'results').exists()


def test_the_vp_beta_limit_counts_the_grid_points_the_sampler_uses():
  import config_checks
  from configs.eval.cifar10.eval_cifar10_configs import get_config
  config = get_config('vpsde')
  config.sampling.predictor, config.model.num_scales = 'reverse_diffusion', 20  # β_max / 20 = 1
  with pytest.raises(config_checks.ConfigError, match='model.num_scales=20'):
    config_checks.check_pc_table(config)
  config.sampling.num_steps = 1000  # the sampler's SDE is discretised with 1 000 steps: β = 0.02
  config_checks.check_pc_table(config)
  config.model.num_scales, config.sampling.num_steps = 1000, 19
  with pytest.raises(config_checks.ConfigError, match='sampling.num_steps=19'):
    config_checks.check_pc_table(config)


def test_a_negative_eta_is_one_line_and_samples_nothing(tmp_path, checkpoints):
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--config.sampling.method=dpmpp_2m',
                       '--config.sampling.dpmpp_2m.eta=-1')
  one_error_line(result, 'sampling.dpmpp_2m.eta=-1.0: must be a number >= 0')
  assert not (tmp_path / 'results' / 'tiny' / 'eval_samples').exists()


def test_a_num_scales_mismatch_names_the_field(tmp_path, checkpoints):
  result = run_sampler(tmp_path, checkpoints, '--mode=class', '--config.model.num_scales=5')
  one_error_line(result, 'model.num_scales=3 (model: 5)')


def test_a_busy_workdir_is_refused(tmp_path, checkpoints):
  with plumbing.RunFolderLock(str(tmp_path / 'results' / 'tiny')):
    result = run_sampler(tmp_path, checkpoints, '--mode=class')
  one_error_line(result, 'results/tiny is in use by pid')
  assert not (tmp_path / 'results' / 'tiny' / 'eval_samples').exists()


# ---------------------------------------------------------------------------------------------
# In-process pieces.

def test_class_range_semantics():
  assert rls.class_range('full', 7, -1, 10) == list(range(10))
  assert rls.class_range('class', 5, 7, 10) == [5, 6]  # the seed README: 5 inclusive to 7 exclusive
  assert rls.class_range('class', 5, -1, 10) == [5]
  assert rls.class_range('class', 0, 100, 100) == list(range(100))
  for bad in ((10, -1), (3, 3), (4, 2), (0, 11)):
    with pytest.raises(ValueError, match='exclusive'):
      rls.class_range('class', *bad, 10)


def test_rounds_per_class_follow_the_original():
  config = load_config(EVAL_CONFIG)
  assert rls.rounds_per_class(config) == 51
  config = load_config('configs/eval/cifar100/eval_cifar100_configs.py')
  assert rls.rounds_per_class(config) == 6
  config.eval.num_samples = 50
  with pytest.raises(ValueError, match='no full batch'):
    rls.rounds_per_class(config)


def test_ranks_split_the_work_list_exactly(tmp_path):
  shards = [rls.pending_work(str(tmp_path), [2, 3, 4], 5, SAMPLE_SHAPE, rank, 4) for rank in range(4)]
  together = [item for shard in shards for item in shard]
  assert sorted(together) == [(c, r) for c in (2, 3, 4) for r in range(5)]
  assert len(set(together)) == len(together)


def test_seeds_are_distinct_per_batch_and_stable():
  seeds = {rls.sample_seed(0, c, r) for c in range(100) for r in range(51)}
  assert len(seeds) == 5100
  assert rls.sample_seed(0, 3, 1) == rls.sample_seed(0, 3, 1) != rls.sample_seed(1, 3, 1)


def test_quantisation_truncates_like_the_original():
  x = torch.tensor([0., 0.999, 0.5, 1.2, -0.1, 1. / 255 - 1e-6]).reshape(1, 1, 2, 3)
  assert fileio.to_uint8(x).reshape(-1).tolist() == [0, 254, 127, 255, 0, 0]


def test_is_complete_rejects_broken_files(tmp_path):
  good, samples = tmp_path / 'good.npz', np.zeros(SAMPLE_SHAPE, np.uint8)
  with open(good, 'wb') as file:
    rls.write_npz(file, samples=samples)
  assert rls.is_complete(str(good), SAMPLE_SHAPE)
  assert not rls.is_complete(str(good), (3,) + SAMPLE_SHAPE[1:])
  assert not rls.is_complete(str(tmp_path / 'absent.npz'), SAMPLE_SHAPE)
  (tmp_path / 'cut.npz').write_bytes(good.read_bytes()[:-40])
  assert not rls.is_complete(str(tmp_path / 'cut.npz'), SAMPLE_SHAPE)
  np.savez(tmp_path / 'other.npz', images=samples)
  assert not rls.is_complete(str(tmp_path / 'other.npz'), SAMPLE_SHAPE)
  np.savez(tmp_path / 'float.npz', samples=samples.astype(np.float32))
  assert not rls.is_complete(str(tmp_path / 'float.npz'), SAMPLE_SHAPE)
  with open(tmp_path / 'again.npz', 'wb') as file:
    rls.write_npz(file, samples=samples)
  assert (tmp_path / 'again.npz').read_bytes() == good.read_bytes()


@pytest.mark.parametrize('count, channels, nrow', [(7, 1, 3), (4, 3, 2), (1, 3, 1), (5, 3, 8)])
def test_png_grid_equals_torchvision_save_image(tmp_path, count, channels, nrow):
  """fileio.save_png_grid writes the pixels of torchvision's save_image (grey as RGB, padding, rounding, clipping)."""
  import torchvision
  images = torch.rand(count, channels, 5, 6, generator=torch.Generator().manual_seed(count)) * 1.2 - 0.1
  fileio.save_png_grid(images, tmp_path / 'ours.png', nrow)
  torchvision.utils.save_image(images, tmp_path / 'torchvision.png', nrow=nrow, padding=2)
  ours, theirs = (np.asarray(Image.open(tmp_path / name)) for name in ('ours.png', 'torchvision.png'))
  assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
