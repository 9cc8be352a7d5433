"""The README's command lines as written: the toy-size run executes line by line in a scratch folder; every full
CIFAR command parses (its script, flags, config file and --config overrides exist), names both checkpoints it needs,
and restores the final checkpoint that a training command of the README writes."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.cifar_fixture import write_cifar_folder
from tests.helpers import REPO_ROOT
from tests.test_evaluation_scripts import build_standin_inception

README = REPO_ROOT / 'README.md'
SCRIPTS = ('main.py', 'run_lib_sampling.py', 'run_lib_evaluation.py', 'run_lib_cas.py')
TOY_SIZE_MARKER = '--workdir tiny_score'


def bash_blocks(text):
  """The commands of every ```bash block: continuation lines joined, comments and blank lines dropped."""
  blocks = []
  for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
    joined = re.sub(r'\\\n\s*', '', block)
    blocks.append([line.split(' #')[0].strip() for line in joined.splitlines()
                   if line.strip() and not line.lstrip().startswith('#')])
  return blocks


def script_commands(commands):
  """(script, argv after it) of each command that runs one of SCRIPTS, directly or through torchrun."""
  found = []
  for command in commands:
    words = shlex.split(command)
    scripts = [index for index, word in enumerate(words) if word in SCRIPTS]
    if words[0] in ('python', 'torchrun') and scripts:
      found.append((words[scripts[0]], words[scripts[0] + 1:]))
  return found


def readme_commands():
  blocks = bash_blocks(README.read_text())
  toy_size = [block for block in blocks if any(TOY_SIZE_MARKER in line for line in block)]
  assert len(toy_size) == 1, 'the README has one toy-size block'
  full = [command for block in blocks if block is not toy_size[0] for command in block]
  return toy_size[0], script_commands(full)


# Parses argv with the script's own flags (as `python <script> argv` would) and prints what the checks need.
PARSE = '''
import json, os, sys
sys.path.insert(0, {root!r})
import importlib, plumbing
from absl import flags
module = importlib.import_module({module!r})
module.define_flags()
plumbing.parse_flags([{script!r}] + {argv!r})
F = flags.FLAGS
print(json.dumps(dict(workdir=F.workdir, steps=F.config.training.n_iters + 1,
                      model=F['model'].value if 'model' in F else None,
                      restore=F['restore'].value if 'restore' in F else None,
                      restore_classifier=F['restore_classifier'].value if 'restore_classifier' in F else None)))
'''


def parse(script, argv):
  code = PARSE.format(root=str(REPO_ROOT), module=script[:-len('.py')], script=script, argv=argv)
  env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0, f'{script} {" ".join(argv)}: {result.stderr[-2000:]}'
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def parsed_full_commands():
  return [(script, argv, parse(script, argv)) for script, argv in readme_commands()[1]]


def test_the_readme_stays_short_and_starts_with_the_released_checkpoints():
  text = README.read_text()
  assert len(text.split()) <= 5000
  heading = text.splitlines().index("## Sampling with the authors' released checkpoints")
  assert heading < 150 and 'github.com/chen-hao-chao/dlsm' in text and 'Pretrained Weights' in text


def test_every_full_command_parses_with_its_script(parsed_full_commands):
  scripts = {script for script, _, _ in parsed_full_commands}
  assert scripts == set(SCRIPTS) and len(parsed_full_commands) >= 15


def test_every_sampling_and_classifier_command_names_its_checkpoints(parsed_full_commands):
  for script, argv, flags in parsed_full_commands:
    if script == 'run_lib_sampling.py':
      assert flags['restore'] and flags['restore_classifier'], argv
    if script == 'main.py' and flags['model'] == 'classifier':
      assert flags['restore'], argv


def test_restored_run_checkpoints_are_the_final_ones_the_readme_trains(parsed_full_commands):
  """results/<workdir>/checkpoints/checkpoint_<n_iters + 1>.pth of a training command in the README."""
  final = {f'results/{flags["workdir"]}/checkpoints/checkpoint_{flags["steps"]}.pth'
           for script, _, flags in parsed_full_commands if script == 'main.py'}
  restored = {path for _, _, flags in parsed_full_commands for path in (flags['restore'], flags['restore_classifier'])
              if path and path.startswith('results/')}
  assert restored and restored <= final, restored - final


def test_the_toy_size_run_works_as_written(tmp_path):
  """Each line of the README's toy-size block in a folder that looks like the repository (its files linked), with a
  CIFAR-format data/ folder and the stand-in Inception module at inception/."""
  for entry in os.listdir(REPO_ROOT):
    if entry not in ('results', 'data', 'inception', '.git', '.venv'):
      os.symlink(REPO_ROOT / entry, tmp_path / entry)
  write_cifar_folder(tmp_path / 'data', 'CIFAR10', num_train=100, num_test=40)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'python').write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  (bin_dir / 'python').chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', OMP_NUM_THREADS='1',
             CUDA_VISIBLE_DEVICES='')
  env.pop('WORLD_SIZE', None)
  has_tensorflow = _has_tensorflow()
  if has_tensorflow:
    build_standin_inception(str(tmp_path / 'inception'))
  skipped = []
  for command in readme_commands()[0]:
    if '--latent' in command and not has_tensorflow:
      skipped.append(command)
      continue
    result = subprocess.run(['bash', '-c', command], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f'{command}\n{result.stderr[-3000:]}'
  metrics = json.loads((tmp_path / 'results' / 'tiny_classifier' / 'metrics.json').read_text())
  assert 'cas' in metrics
  if skipped:
    pytest.skip(f'TensorFlow is not installed (the evaluation extra): not run: {skipped[0][:60]}…')
  assert {'fid', 'inception_score', 'precision'} <= set(metrics['full'])


def _has_tensorflow():
  import importlib.util
  return importlib.util.find_spec('tensorflow') is not None
