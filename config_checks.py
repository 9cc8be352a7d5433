"""Config validation, before any model loads or file is written: one ConfigError line naming the field, its value and
what is allowed. Misspelt fields and wrong types are refused earlier, by the flag parser (plumbing.parse_flags)."""
import losses
import sde_lib
import time_grids

VP_FAMILY = ('vpsde', 'subvpsde')


class ConfigError(ValueError):
  """A config value outside its allowed range, or settings that cannot work together."""


def _get(config, field):
  node = config
  for name in field.split('.'):
    node = node[name]
  return node


def require(config, field, allowed, test):
  """ConfigError '<field>=<value>: must be <allowed>' unless test(value)."""
  value = _get(config, field)
  if not test(value):
    raise ConfigError(f'{field}={value!r}: must be {allowed}')


def require_positive(config, *fields):
  for field in fields:
    require(config, field, 'a number > 0', lambda value: isinstance(value, (int, float)) and value > 0)


def require_divisible(config, field, world_size):
  require(config, field, f'divisible by the number of processes ({world_size})', lambda value: value % world_size == 0)


def check_sde_and_model(config):
  """SDE name, N, and the NCSN++ settings each SDE needs (VP / sub-VP: no σ scaling, enough positional indices)."""
  require(config, 'model.num_scales', 'an integer >= 1', lambda n: isinstance(n, int) and n >= 1)
  sde_lib.get_sde(config)  # a one-line ValueError naming training.sde and the known SDEs
  if config.training.sde.lower() not in VP_FAMILY or config.model.get('name') != 'ncsnpp':
    return
  if config.model.get('scale_by_sigma', False):
    raise ConfigError(f'model.scale_by_sigma=True is a VE setting (it divides by σ) but training.sde='
                      f'{config.training.sde}: use the VP / sub-VP settings (--config=<config file>:'
                      f'{config.training.sde})')
  if (config.model.get('embedding_type') == 'positional' and config.training.continuous
      and config.model.num_scales < 1000):
    raise ConfigError(f'model.num_scales={config.model.num_scales}: must be >= 1000 with the positional embedding on '
                      f'the continuous {config.training.sde} (the network looks up its σ table at 999·t)')


def check_training(config, model, world_size=1):
  """Fields read by the score / classifier trainers."""
  check_sde_and_model(config)
  require_positive(config, 'training.batch_size', 'training.snapshot_freq', 'training.log_freq',
                   'training.eval_freq')
  require_divisible(config, 'training.batch_size', world_size)
  require(config, 'training.n_iters', 'an integer >= 0 (n_iters + 1 updates run)',
          lambda n: isinstance(n, int) and n >= 0)
  require(config, 'optim.lr', 'a number >= 0', lambda lr: lr >= 0)
  require(config, 'optim.warmup', 'an integer >= 0', lambda warmup: warmup >= 0)
  if model == 'classifier':
    require_positive(config, 'eval.batch_size', 'classifier.classes')
    require_divisible(config, 'eval.batch_size', world_size)
    require(config, 'training.continuous', 'True for classifier training (as the original)', bool)
    check_classifier_objective(config)
  elif config.training.snapshot_sampling and 'image_size' not in config.data:
    raise ConfigError(f'training.snapshot_sampling=True: needs image data (data.image_size), but '
                      f'data.dataset={config.data.dataset!r} has none')


def check_classifier_objective(config):
  """Builds the objective of config.model.loss_type: its name and hyperparameter fields."""
  sde, _ = sde_lib.get_sde(config)
  try:
    losses.get_classifier_objective(config.model, sde)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def check_sampling(config):
  """Fields read by run_lib_sampling.py, the sampler's own options (checked by building it) and a VP step table the
  PC steps can use."""
  check_sde_and_model(config)
  require_positive(config, 'training.batch_size', 'eval.num_samples', 'classifier.classes')
  sampling = config.sampling
  if sampling.scaling_factor < 0 and not sampling.get('allow_negative_scale', False):
    raise ConfigError(f'sampling.scaling_factor={sampling.scaling_factor}: must be >= 0 (a negative guidance scale '
                      'pushes samples away from their class; allow it with --config.sampling.allow_negative_scale)')
  grid, grids = sampling.get('grid', 'linear'), time_grids.grid_names()
  if grid not in grids:  # before the builders, whose grid checks would name only the grids their sampler takes
    raise ConfigError(f'sampling.grid={grid!r}: must be one of {", ".join(map(repr, grids))}')
  check_sampler(config)
  if sampling.method.lower() == 'pc':
    check_pc_table(config)


def check_sampler(config):
  """Builds the sampler of config.sampling without networks: its builders check the method and its options."""
  import sampling
  sde, eps = sde_lib.get_sde(config)
  try:
    sampling.get_sampling_fn(config, sde, (1, 1), lambda x: x, eps)
  except (ValueError, NotImplementedError) as error:
    raise ConfigError(str(error)) from None


def check_pc_table(config):
  """A VP step table that stays below β = 1 where the PC steps divide by or take the root of 1 − β."""
  sampling, sde_name = config.sampling, config.training.sde.lower()
  predictor, corrector = sampling.predictor.lower(), sampling.corrector.lower()
  table_steps = [step for step, reads_table in (
      (predictor, sde_name == 'vpsde' and predictor in ('ancestral_sampling', 'reverse_diffusion')),
      (corrector, sde_name in VP_FAMILY and corrector in ('langevin', 'ald'))) if reads_table]
  field, steps = table_size(config)
  last_beta = config.model.beta_max / steps
  if table_steps and last_beta >= 1:
    raise ConfigError(f'{field}={steps}: the VP step table reaches β = model.beta_max / {field.split(".")[1]} = '
                      f'{last_beta:g} >= 1, where the {" and ".join(table_steps)} steps divide by or take the root of '
                      f'1 − β; use {field} > {config.model.beta_max:g}')


def table_size(config):
  """(field, value) of the number of grid points the sampler steps on: sampling.num_steps when set (non-zero), else
  model.num_scales."""
  if config.sampling.get('num_steps', 0):
    return 'sampling.num_steps', config.sampling.num_steps
  return 'model.num_scales', config.model.num_scales


def check_cas(config):
  """Fields read by run_lib_cas.py."""
  require_positive(config, 'training.batch_size', 'training.log_freq', 'training.eval_freq', 'eval.batch_size')
  require(config, 'training.n_iters', 'an integer >= 0', lambda n: isinstance(n, int) and n >= 0)


def check_evaluation(config):
  """Fields read by run_lib_evaluation.py."""
  require_positive(config, 'eval.batch_size', 'eval.nearest_k', 'classifier.classes')


def check_posterior(config):
  """Fields read by run_lib_evaluation.py --posterior: a VE SDE (the mixture of the training images is the noisy
  data distribution only where x̃ = x + σz), σ levels inside the SDE's range and a number of noise draws."""
  require(config, 'training.sde', "'vesde' (x̃ = x + σz)", lambda name: name.lower() == 'vesde')
  require(config, 'eval.posterior_sigmas', f'σ levels in [{config.model.sigma_min:g}, {config.model.sigma_max:g}]',
          lambda sigmas: len(sigmas) > 0 and all(config.model.sigma_min <= s <= config.model.sigma_max for s in sigmas))
  require(config, 'eval.posterior_draws', 'an integer >= 1', lambda n: isinstance(n, int) and n >= 1)
