"""Plumbing shared by main.py and the run_lib* scripts: flags, one-line errors, torchrun set-up and the run-folder
lock. File writes (atomic writes, PNG grids, the uint8 samples) sit one floor down, in fileio.

Every script follows one pattern:

  def define_flags():            # flags exist only when the file runs as a script (tests import the modules)
    plumbing.define_run_flags('Training configuration file.')
    ...
  if __name__ == '__main__':
    define_flags()
    plumbing.run_script(main)    # one line on stderr and exit status 1 for every expected failure
"""
import contextlib
import datetime
import fcntl
import os
import re
import socket
import sys
import time

from absl import app, flags

import fileio

FLAGS = flags.FLAGS
HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')
LOCK_NAME = 'run.lock'


INTERRUPTED_STATUS = 130  # the shell's status for a process ended by SIGINT (128 + 2)


class ScriptError(fileio.ExpectedError):
  """A script's run cannot go on (busy folder, bad samples, ...): reported in one line without a traceback."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, carrying the way out (e.g. 'rerun the same command to resume from …'): one line, exit status 130."""


# ---------------------------------------------------------------------------------------------- flags


def define_run_flags(config_help, data_dir=False):
  """--config (with --config.<field>=value overrides), --workdir and optionally --data_dir."""
  from ml_collections.config_flags import config_flags
  config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run folder name; the run lives in results/<workdir>.')
  if data_dir:
    flags.DEFINE_string('data_dir', None, 'Folder holding the data set (cifar-10-batches-py / cifar-100-python); '
                        'overrides config.data.root only when given.')
  flags.mark_flags_as_required(['config', 'workdir'])


def apply_flag_overrides(config, overrides):
  """config.<field> = value for every {'section.field': value} whose flag was given (value not None)."""
  for field, value in overrides.items():
    if value is None:
      continue
    *sections, name = field.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[name] = value


def _split_overrides(argv):
  """argv as [(flag name or None, [tokens])]: '--config.f=v' and '--config.f v' each make one item."""
  items, index = [], 0
  while index < len(argv):
    arg = argv[index]
    separate_value = (arg.startswith('--config.') and '=' not in arg and index + 1 < len(argv)
                      and not argv[index + 1].startswith('--'))
    tokens = argv[index:index + 2] if separate_value else [arg]
    items.append((arg.split('=', 1)[0] if arg.startswith('--config.') else None, tokens))
    index += len(tokens)
  return items


def last_override_wins(argv):
  """Drop all but the last --config.<field> of each field: ml_collections appends repeated tuple overrides."""
  items = _split_overrides(argv)
  last = {name: position for position, (name, _) in enumerate(items) if name}
  return [token for position, (name, tokens) in enumerate(items) if name is None or last[name] == position
          for token in tokens]


def _unknown_field_message(argv, error):
  """'--config.model.nff: no such config field (did you mean "nf"?)' from ml_collections' AttributeError."""
  text = str(error).replace('\\n', '\n').replace("\\'", "'").strip('\'"')
  name = text.split('\n')[0].strip('\'"')
  hint = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((arg.split('=', 1)[0] for arg in argv if arg.startswith('--config.')
               and arg.split('=', 1)[0].rsplit('.', 1)[-1] == name), f'--config.<...>.{name}')
  return f'{flag}: no such config field' + (f' (did you mean "{hint.group(1)}"?)' if hint else '')


def config_file_argument(argv):
  """The value of --config (either form) in `argv`, or None."""
  for index, arg in enumerate(argv):
    if arg == '--config' and index + 1 < len(argv):
      return argv[index + 1]
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
  return None


def check_config_file(argv):
  """A one-line error when --config names no file (with a --config.<field> override too, ml_collections raises an
  OSError traceback instead). The part after ':' (e.g. ':vpsde') is the config's argument."""
  value = config_file_argument(argv)
  if value is None or any(arg in HELP_FLAGS for arg in argv[1:]):
    return
  path = value.split(':', 1)[0]
  if not os.path.isfile(path):
    fail(f'--config {value}: {path} is not a file {relative_to_here()}; pass a config file such as '
         'configs/score/cifar10_score_configs.py')


def parse_flags(argv):
  """absl's parser with one-line errors (missing config file, unknown flag, misspelt config field, wrong type)."""
  check_config_file(argv)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as error:  # ml_collections: a --config.<field> that does not exist
    fail(_unknown_field_message(argv, error))
  except (flags.Error, ValueError, TypeError, OSError) as error:  # bad values, a failing config file
    fail(str(error))


# ---------------------------------------------------------------------------------------------- running


def one_line(text):
  """`text` on one line; an embedded traceback (ml_collections quotes one for a failing config file) shrinks to its
  last line, the exception itself."""
  lines = str(text).strip().splitlines()
  starts = [index for index, line in enumerate(lines) if line.startswith('Traceback (most recent call last)')]
  if starts:
    lines = lines[:starts[0]] + lines[-1:]
  return ' '.join(' '.join(lines).split())


def fail(message):
  """The one-line error of every script: 'error: …' on stderr, exit status 1."""
  print(f'error: {one_line(message)}', file=sys.stderr)
  sys.exit(1)


# What a user's input or machine can cause: missing/corrupt files, bad configs, full disks, busy folders, a loss that
# stopped being finite.
EXPECTED_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError, fileio.ExpectedError)


def _message(error):
  if isinstance(error, KeyError) and error.args:
    return error.args[0]
  if isinstance(error, OSError) and error.filename and error.strerror:
    return f'{error.filename}: {error.strerror}'
  return str(error)


def stop_interrupted(interruption):
  """The one line of Ctrl-C: what to do next (an Interrupted's message, else a plain rerun), exit status 130."""
  way_out = str(interruption) if isinstance(interruption, Interrupted) else 'rerun the same command to continue'
  print(f'interrupted (Ctrl-C); {one_line(way_out)}', file=sys.stderr)
  sys.exit(INTERRUPTED_STATUS)


def run_script(main):
  """app.run(main) with the last of repeated --config overrides, --help exiting 0, one-line errors, and Ctrl-C
  as one line with exit status 130."""
  argv = last_override_wins(sys.argv)

  def guarded_main(args):
    try:
      main(args)
    except EXPECTED_ERRORS as error:
      fail(_message(error))
  try:
    app.run(guarded_main, argv=argv, flags_parser=parse_flags)
  except KeyboardInterrupt as interruption:
    stop_interrupted(interruption)
  except SystemExit:
    if any(arg in HELP_FLAGS for arg in argv[1:]):  # absl ends --help with status 1
      sys.exit(0)
    raise


# ---------------------------------------------------------------------------------------------- torchrun


def checkpoint_paths(config):
  """(score, classifier) checkpoint paths from the config; a clear error if one is unset or missing."""
  paths = []
  for field, flag in (('score_restore_path', '--restore'), ('classifier_restore_path', '--restore_classifier')):
    path = config.model.get(field)
    if path is None:
      raise ValueError(f'No model.{field}: pass {flag} or set it in the config')
    paths.append(require_checkpoint_file(path, f'model.{field}', flag))
  return paths


def torchrun_rank():
  """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain run."""
  env = os.environ
  return int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)), int(env.get('LOCAL_RANK', 0))


def process_device(config, deterministic=False):
  """config.device, or cuda:<LOCAL_RANK> for each torchrun process; written back into config.device.

  deterministic: the same cuDNN algorithms in every process (sampling shards then write the same files)."""
  import torch
  from models import utils as mutils
  _, world_size, local_rank = torchrun_rank()
  device = mutils.get_device(config)
  if world_size > 1 and device.type == 'cuda' and device.index is None:
    device = torch.device('cuda', local_rank)
  if device.type == 'cuda' and device.index is not None:
    torch.cuda.set_device(device)
  if device.type == 'cuda' and deterministic:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
  config.device = str(device)  # so create_model / samplers place everything here
  return device


# ---------------------------------------------------------------------------------------------- files


def relative_to_here():
  """The reminder every 'does not exist' message carries: results/, data/ and every other path start here."""
  return f'(paths are relative to the current directory, {os.getcwd()})'


def require_checkpoint_file(path, field, flag):
  """`path` when it is a file; else FileNotFoundError naming `field`, the flag that sets it and, for a run folder,
  the newest checkpoint inside it."""
  if os.path.isfile(path):
    return path
  if os.path.isdir(path):
    newest = newest_checkpoint_below(path)
    hint = f' (its newest is {newest})' if newest else ''
    raise FileNotFoundError(f'{field} = {path} is a folder, not a checkpoint file: pass {flag} '
                            f'<folder>/checkpoints/checkpoint_<step>.pth{hint}')
  raise FileNotFoundError(f'{field} = {path} does not exist {relative_to_here()}: pass {flag} <checkpoint file>')


def interruption_resuming_from(ckpt_dir):
  """Interrupted naming the checkpoint in `ckpt_dir` that a rerun of the same command resumes from."""
  newest = newest_checkpoint_below(ckpt_dir)
  if newest is None:
    return Interrupted('no checkpoint was written yet; rerun the same command to start again')
  return Interrupted(f'rerun the same command to resume from {newest}')


def newest_checkpoint_below(folder):
  """The checkpoint_<step>.pth with the largest step in `folder` or `folder`/checkpoints, or None."""
  from models import checkpoint
  for candidate in (folder, os.path.join(folder, 'checkpoints')):
    found = checkpoint.list_checkpoints(candidate)
    if found:
      return found[-1][1]
  return None



# ---------------------------------------------------------------------------------------------- run-folder lock


def missing_folders(folder):
  """The folders from the outermost missing ancestor of `folder` down to `folder` itself ([] if it exists)."""
  missing, current = [], os.path.abspath(folder)
  while not os.path.exists(current):
    missing.insert(0, current)
    current = os.path.dirname(current)
  return missing


def remove_empty_folders(folders):
  """Remove `folders` (outermost first, as missing_folders lists them) from the innermost up while they are empty."""
  for folder in reversed(folders):
    try:
      os.rmdir(folder)
    except OSError:  # not empty (the run wrote into it) or already gone
      return


def _holder_line(file, wait=1.):
  """The 'pid … on host …' line of a lock file another process holds. The holder writes it just after it takes the
  lock, so a run started at the same moment may find the file still empty: it rereads for up to `wait` seconds."""
  deadline = time.monotonic() + wait
  while True:
    file.seek(0)
    holder = file.read().strip()
    if holder or time.monotonic() > deadline:
      return holder or 'another process'
    time.sleep(0.02)


class RunFolderLock:
  """One run per folder: an exclusive flock on <folder>/run.lock, which records the holder's pid and host.

  The kernel drops the flock when the holder dies (kill -9 included), so a stale lock file never blocks a new run.
  Folders the lock created and the run left empty (a start that failed before writing) are removed again.
  """

  def __init__(self, folder):
    self.folder = folder
    self.path = os.path.join(folder, LOCK_NAME)
    self.file = None
    self.created = []

  def __enter__(self):
    self.created = missing_folders(self.folder)
    os.makedirs(self.folder, exist_ok=True)
    while self.file is None:
      file = open(self.path, 'a+')
      try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _holder_line(file)
        file.close()
        remove_empty_folders(self.created)
        raise ScriptError(f'{self.folder} is in use by {holder}; wait for that run to end or use another --workdir')
      if _same_file(file, self.path):  # not unlinked by a holder that finished meanwhile
        self.file = file
      else:
        file.close()
    self.file.truncate(0)
    started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    self.file.write(f'pid {os.getpid()} on host {socket.gethostname()} (started {started})\n')
    self.file.flush()
    return self

  def __exit__(self, *exc):
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)
    self.file.close()
    self.file = None
    remove_empty_folders(self.created)
    return False


def _same_file(file, path):
  try:
    return os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
  except FileNotFoundError:
    return False


def lock_run_folder(folder, rank=0):
  """RunFolderLock for torchrun's rank 0 (and plain runs); other ranks run inside their rank 0's lock."""
  return RunFolderLock(folder) if rank == 0 else contextlib.nullcontext()
