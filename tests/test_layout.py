"""The shape of the house, read from the source with `ast`: library modules never import the script layer, a library
or plumbing function's name is defined nowhere else, and no function outside configs and tests takes more than eight
parameters."""
import ast

import pytest

from tests.helpers import REPO_ROOT

SCRIPT_LAYER = ('plumbing', 'config_checks', 'main')  # and every run_lib*
LIBRARY = ('fileio', 'registry', 'tables', 'sde_lib', 'losses', 'sampling', 'datasets', 'evaluation', 'evaluation_tf',
           'time_grids', 'mixture', 'models', 'toy')
MAX_PARAMETERS = 8
ENTRY_POINT = 'main'  # every runnable file's, evaluation_tf's (the TensorFlow worker process) too


def module_files(names):
  """The .py files of the top-level modules and packages in `names`."""
  files = []
  for name in names:
    package = REPO_ROOT / name
    files += sorted(package.glob('*.py')) if package.is_dir() else [REPO_ROOT / f'{name}.py']
  return files


def source_files():
  """Every .py file of the project outside configs/ and tests/."""
  return sorted(path for path in REPO_ROOT.rglob('*.py')
                if path.relative_to(REPO_ROOT).parts[0] not in ('configs', 'tests', '.venv', 'results'))


def parse(path):
  return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree):
  """The top-level names of every module `tree` imports, at any depth (function-level imports too)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split('.')[0])
  return names


def is_script_layer(name):
  return name in SCRIPT_LAYER or name.startswith('run_lib')


def parameter_count(function):
  """Every parameter, defaults and *args / **kwargs included; a method's self or cls does not count."""
  args = function.args
  names = [arg.arg for arg in args.posonlyargs + args.args + args.kwonlyargs]
  if names and names[0] in ('self', 'cls'):
    names = names[1:]
  return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def top_level_functions(path):
  return [node.name for node in parse(path).body
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != ENTRY_POINT]


@pytest.mark.parametrize('path', module_files(LIBRARY), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_library_modules_import_nothing_of_the_script_layer(path):
  upward = sorted(name for name in imported_modules(parse(path)) if is_script_layer(name))
  assert not upward, f'{path.relative_to(REPO_ROOT)} imports the script layer: {upward}'


def test_the_layer_lists_cover_every_top_level_module():
  modules = {path.stem for path in REPO_ROOT.glob('*.py')} | {'models', 'toy'}
  unlisted = sorted(name for name in modules if name not in LIBRARY and not is_script_layer(name))
  assert not unlisted, f'modules in neither layer: {unlisted}'


def test_library_and_plumbing_function_names_are_defined_once():
  owners = {}
  for path in module_files(LIBRARY + ('plumbing',)):
    for name in top_level_functions(path):
      owners.setdefault(name, []).append(path)
  again = []
  for path in source_files():
    for name in top_level_functions(path):
      if name in owners and owners[name] != [path]:
        again.append(f'{name}: {path.relative_to(REPO_ROOT)} and '
                     + ', '.join(str(owner.relative_to(REPO_ROOT)) for owner in owners[name] if owner != path))
  assert not again, 'defined more than once:\n' + '\n'.join(sorted(set(again)))


def test_no_function_takes_more_than_eight_parameters():
  crowded = [f'{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({parameter_count(node)})'
             for path in source_files() for node in ast.walk(parse(path))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS]
  assert not crowded, 'functions over eight parameters:\n' + '\n'.join(crowded)


def test_the_checks_see_what_they_should_refuse():
  """The parsers themselves: an upward import inside a function, a nine-parameter function, a method's self."""
  tree = ast.parse('def f(a, b, c, d, e, f, g, h, *rest):\n  import plumbing\n'
                   'class C:\n  def m(self, a, b, c, d, e, f, g, h):\n    pass\n')
  function, method = tree.body[0], tree.body[1].body[0]
  assert 'plumbing' in imported_modules(tree) and is_script_layer('run_lib_toy')
  assert parameter_count(function) == 9 and parameter_count(method) == 8
