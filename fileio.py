"""The bottom floor: atomic file writes, the saved samples' pixel format (uint8, PNG grids) and the project's error
base class. Imports nothing of the project, so every module, library or script, may use it."""
import errno
import os
import re
import shutil

import numpy as np

TEMP_FILE = re.compile(r'^\..+\.(\d+)(\.[0-9a-f]{8})?\.tmp$')  # .<name>.<pid>[.<random>].tmp, see atomic_write


class ExpectedError(Exception):
  """A failure the user can fix (a busy folder, bad samples, a missing extra, a diverged loss): every script reports
  it in one line, without a traceback."""


# ---------------------------------------------------------------------------------------------- atomic writes


def _temp_path(path):
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f'.{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp')


def atomic_write(path, write, mode='wb'):
  """write(file) into a temporary file beside `path`, fsync, rename: `path` is never left half-written.

  A full disk or a read-only folder raises OSError naming `path` and the cause; nothing at `path` changes.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp_path = _temp_path(path)
  try:
    with open(tmp_path, mode) as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())
    os.replace(tmp_path, path)
  except OSError as error:
    raise OSError(error.errno, f'cannot write: {error.strerror or error}', path) from error
  except RuntimeError as error:  # torch.save reports some write failures as RuntimeError
    raise OSError(errno.EIO, f'cannot write: {_disk_cause(error, path)}', path) from error
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)


def _disk_cause(error, path):
  """The errno text inside torch's message, or 'No space left on device' when the disk is (nearly) full."""
  text = str(error)
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
    if os.strerror(code) in text:
      return os.strerror(code)
  if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2**20:
    return os.strerror(errno.ENOSPC)
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def write_text_atomic(path, text):
  atomic_write(path, lambda file: file.write(text), mode='w')


def _process_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temp_files(folder):
  """Delete temporary files of atomic_write whose writer process is gone (left by kill -9); returns their paths."""
  removed = []
  for root, _, names in os.walk(folder):
    for name in names:
      match = TEMP_FILE.match(name)
      if match and not _process_alive(int(match.group(1))):
        os.remove(os.path.join(root, name))
        removed.append(os.path.join(root, name))
  return removed


# ---------------------------------------------------------------------------------------------- sample images


def to_uint8(images):
  """NCHW floats in [0, 1] -> NHWC uint8 by clip(x·255, 0, 255) and truncation (the original's quantisation)."""
  return np.clip(images.permute(0, 2, 3, 1).cpu().numpy() * 255., 0, 255).astype(np.uint8)


def save_png_grid(images, file, nrow, padding=2):
  """The PNG of torchvision.utils.save_image, without importing torchvision (2 s of every process's start-up).

  images: NCHW floats in [0, 1] (tensor or array). Tiles `nrow` per row with `padding` black pixels around each
  (one image: no padding), grey images as RGB; pixel = clip(255·x + 0.5, 0, 255) truncated, as save_image.
  """
  from PIL import Image
  x = images.detach().cpu().numpy() if hasattr(images, 'detach') else np.asarray(images)
  x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
  if len(x) == 1:
    grid = x[0]
  else:
    count, channels, height, width = x.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = np.zeros((channels, rows * (height + padding) + padding, columns * (width + padding) + padding), x.dtype)
    for index, image in enumerate(x):
      top = (index // columns) * (height + padding) + padding
      left = (index % columns) * (width + padding) + padding
      grid[:, top:top + height, left:left + width] = image
  pixels = np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
  Image.fromarray(pixels).save(file, format='png')
