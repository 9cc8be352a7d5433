"""The repository points only to what it contains: no file cites the reference document the code was written from."""
import os
import re
import subprocess

from tests.helpers import REPO_ROOT

# The word followed by a section sign, or opening a bracket before a number; built from pieces so that this file
# does not match itself.
CITATION = re.compile('spec' + r'\s*§' + '|' + r'\(' + 'spec' + r'\s+\d')
TEXT_SUFFIXES = ('.py', '.md', '.txt', '.cfg', '.toml', '.ini', 'Makefile')


def walked_files():
  """Every file below the repository root outside hidden folders (for a copy without git)."""
  names = []
  for folder, subfolders, files in os.walk(REPO_ROOT):
    subfolders[:] = [name for name in subfolders if not name.startswith('.')]
    names += [os.path.relpath(os.path.join(folder, name), REPO_ROOT) for name in files]
  return names


def repository_files():
  """Tracked and untracked, not ignored, files of the checkout."""
  try:
    listing = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return walked_files()
  return [name for name in listing.splitlines() if (REPO_ROOT / name).is_file()]


def test_no_file_cites_the_reference_document():
  citing = [f'{name}:{number}' for name in repository_files() if name.endswith(TEXT_SUFFIXES)
            for number, line in enumerate((REPO_ROOT / name).read_text(errors='ignore').splitlines(), 1)
            if CITATION.search(line)]
  assert not citing, citing
