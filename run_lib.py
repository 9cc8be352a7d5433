"""Training loops: the score model (denoising score matching) and the noise-conditioned classifier (CE, DLSM or both).

Both run single-process or under `torchrun` (DistributedDataParallel: NCCL on GPUs, gloo on CPU). The configured
`training.batch_size` is the GLOBAL batch: every update sees the same number of examples whatever the number of
processes, each process taking an equal share (as the original's DataParallel split its batch across GPUs; with
BatchNorm in train mode the DLSM gradient couples the examples of one share only, B35). Only rank 0 writes.

A run lives in `workdir`: checkpoints/checkpoint_<step>.pth (step = completed updates, B26), tensorboard/, samples/,
log.txt. A restarted run resumes from the newest complete checkpoint (model, EMA, optimizer, step; B25). Updates run
for steps 0 … n_iters inclusive, i.e. n_iters + 1 updates, as the original (B27).
"""
import contextlib
import datetime
import logging
import os
import random
import socket
import sys
import types

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import config_checks
import datasets
import fileio
import losses
import plumbing
import registry
import sde_lib
from models import checkpoint as ckpt
from models import utils as mutils
from models.ema import ExponentialMovingAverage, ema_weights

TRAINERS = {}  # main.py --model -> trainer(config, workdir)
register_trainer = registry.decorator_for(TRAINERS)


# ---------------------------------------------------------------------------------------------- run set-up


class HeldRecords(logging.Handler):
  """Keeps the log records of a run's set-up until its log file opens (a start that fails writes no log.txt)."""

  def __init__(self):
    super().__init__()
    self.records = []

  def emit(self, record):
    self.records.append(record)


class Run:
  """Process-level context of one training run: ranks, device, log file, TensorBoard, progress bar.

  Entering takes the folder's lock only; `open_records` writes the first files (log.txt, config.txt, tensorboard/)
  once the set-up (models, checkpoints, data) has succeeded, so a start that fails leaves nothing behind.
  """

  def __init__(self, config, workdir):
    self.workdir = workdir
    self.config = config
    self.rank, self.world_size, _ = plumbing.torchrun_rank()
    self.device = self._setup_device(config)
    self.is_main = self.rank == 0
    self.ckpt_dir = os.path.join(workdir, 'checkpoints')
    self.writer = None
    self.log_handler = None
    self.held = None
    self.progress = None
    self.lock = plumbing.lock_run_folder(workdir, self.rank)

  def _setup_device(self, config):
    device = plumbing.process_device(config)
    if self.world_size > 1 and not dist.is_initialized():
      dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', timeout=datetime.timedelta(minutes=30))
    if device.type == 'cuda':  # exact float32 unless the config opts into TF32 convolutions / matmuls
      mutils.use_exact_float32(not config.training.get('allow_tf32', False))
    return device

  def __enter__(self):
    root = logging.getLogger()
    self._root_level = root.level
    if not self.is_main:  # other ranks report warnings and errors only
      root.setLevel(logging.WARNING)
      return self
    if root.level > logging.INFO:
      root.setLevel(logging.INFO)
    self.lock.__enter__()  # one run per workdir
    self.held = HeldRecords()
    root.addHandler(self.held)
    return self

  def open_records(self):
    """The run's first writes: checkpoints/, log.txt (with the set-up's records), tensorboard/, config.txt."""
    if not self.is_main:
      return
    os.makedirs(self.ckpt_dir, exist_ok=True)
    self.log_handler = logging.FileHandler(os.path.join(self.workdir, 'log.txt'))
    self.log_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    root = logging.getLogger()
    root.removeHandler(self.held)
    for record in self.held.records:
      self.log_handler.handle(record)
    self.held = None
    root.addHandler(self.log_handler)
    for path in fileio.remove_stale_temp_files(self.workdir):
      logging.info('Removed %s, left by an interrupted run', path)
    self.writer = tensorboard_writer(os.path.join(self.workdir, 'tensorboard'))
    record_start(self.workdir, self.config)

  def __exit__(self, exc_type, exc, traceback):
    if self.progress is not None:
      self.progress.close()
    if exc is not None and self.log_handler is not None:  # stderr gets the script's one line instead
      reason = 'interrupted (Ctrl-C)' if isinstance(exc, KeyboardInterrupt) else f'{type(exc).__name__}: {exc}'
      self.log_handler.handle(logging.makeLogRecord(dict(levelno=logging.ERROR, levelname='ERROR',
                                                         msg=f'Training stopped: {reason}')))
    if self.writer is not None:
      self.writer.close()
    root = logging.getLogger()
    for handler in (self.log_handler, self.held):
      if handler is not None:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(self._root_level)
    if self.world_size > 1 and dist.is_initialized() and exc is None:
      dist.barrier()
    if self.is_main and self.lock.file is not None:
      self.lock.__exit__(exc_type, exc, traceback)
    if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, plumbing.Interrupted):
      raise plumbing.interruption_resuming_from(self.ckpt_dir) from None
    return False

  def seed(self, config, initial_step):
    """Seed torch / NumPy / random from config.seed (B30); ranks and resumed runs get distinct streams.

    DDP broadcasts rank 0's initial weights, so the rank offset only decorrelates the t / z draws.
    """
    seed = config.seed + 100_003 * self.rank + initial_step
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

  def wrap(self, model):
    """DistributedDataParallel around `model` when running under torchrun."""
    if self.world_size == 1:
      return model
    device_ids = [self.device.index] if self.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

  def data(self, config, split, initial_step, **options):
    """Batches of `split`, this rank's share; the order depends on config.seed and the starting step."""
    return datasets.get_dataset(config, split, seed=config.seed + initial_step, rank=self.rank,
                                world_size=self.world_size, **options)

  def mean(self, value):
    """Mean of a scalar tensor over the ranks, as a Python float."""
    value = value.detach().float().reshape(1)
    if self.world_size > 1:
      dist.all_reduce(value)
      value /= self.world_size
    return value.item()

  def total(self, value):
    """Sum of a tensor over the ranks."""
    value = value.detach().clone()
    if self.world_size > 1:
      dist.all_reduce(value)
    return value

  def start_progress(self, initial_step, num_updates, description):
    self.progress = tqdm(total=num_updates, initial=initial_step, desc=description, disable=not self.is_main,
                         mininterval=1.0, dynamic_ncols=True)

  def scalar(self, tag, value, step):
    if self.writer is not None:
      self.writer.add_scalar(tag, value, step)


def record_start(workdir, config):
  """Append this start's time, host and config to config.txt: the file keeps the history of starts."""
  started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  with open(os.path.join(workdir, 'config.txt'), 'a') as file:
    file.write(f'# ---- start {started}, pid {os.getpid()} on {socket.gethostname()}\n{config}\n')


def tensorboard_writer(log_dir):
  """torch's SummaryWriter without TensorFlow: tensorboard's own stub replaces TF (training never imports TF)."""
  if 'tensorflow' not in sys.modules:
    sys.modules.setdefault('tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf'))
  from torch.utils.tensorboard import SummaryWriter
  return SummaryWriter(log_dir)


def ensure_finite(run, value, step, what):
  """Stop the run (all ranks see the same averaged value) when a loss is NaN or infinite."""
  if not np.isfinite(value):
    last = ckpt.latest_checkpoint(run.ckpt_dir)
    raise losses.NonFiniteLossError(f'{what} is {value} at step {step}; stopping. Last good checkpoint: {last} '
                                    f'(nothing was written after it).')


def save_training_checkpoint(run, config, model, optimizer, step, ema=None):
  """Atomic checkpoint_<step>.pth on rank 0, refused if a parameter is not finite."""
  if not run.is_main:
    return
  bad = [name for name, p in ckpt.unwrap(model).named_parameters() if not torch.isfinite(p).all()]
  if bad:
    raise losses.NonFiniteLossError(f'Parameters {bad[:3]} are not finite at step {step}; no checkpoint written.')
  path = ckpt.checkpoint_path(run.ckpt_dir, step)
  ckpt.save_checkpoint(path, model, optimizer=optimizer, step=step, ema=ema)
  ckpt.prune_checkpoints(run.ckpt_dir, config.training.get('keep_checkpoints', 0))
  logging.info('Saved checkpoint %s', path)


def resume_step(run, model, optimizer, ema=None):
  """Restore the newest complete checkpoint of the run, if any; returns the number of completed updates."""
  path = ckpt.latest_checkpoint(run.ckpt_dir)
  if path is None:
    return 0
  step = ckpt.restore_training_state(path, model, optimizer, ema=ema, device=run.device)
  if run.is_main:
    logging.info('Resumed from %s (step %d)', path, step)
  apply_optimizer_settings(run, run.config, optimizer, path)
  return step


OPTIMIZER_SETTINGS = ('lr', 'betas', 'eps', 'weight_decay', 'momentum')


def optimizer_settings(config):
  """The optimizer hyper-parameters the config sets (lr only without warm-up: with warm-up every step sets it)."""
  fresh = losses.get_optimizer(config, [torch.zeros(1, requires_grad=True)]).param_groups[0]
  skip = ('lr',) if config.optim.warmup > 0 else ()
  return {name: fresh[name] for name in OPTIMIZER_SETTINGS if name in fresh and name not in skip}


def apply_optimizer_settings(run, config, optimizer, path):
  """A resumed optimizer takes the config's settings; each change is logged, never silently ignored."""
  for name, value in optimizer_settings(config).items():
    saved = optimizer.param_groups[0][name]
    if tuple(np.atleast_1d(saved)) != tuple(np.atleast_1d(value)):
      if run.is_main:
        logging.warning('optim: %s was %s in %s; the config sets %s, which applies from now on', name, saved, path,
                        value)
      for group in optimizer.param_groups:
        group[name] = value


def loss_eps(config, default):
  """Lower end of the training time range: config.training.eps when present (the toy: 0), else `default`."""
  eps = config.training.get('eps', None)
  return default if eps is None else eps


def new_ema(config, model):
  return ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)


@contextlib.contextmanager
def training_run(config, workdir, model):
  """The checked config's Run of `model` ('score' or 'classifier'), seeded for reproducible initial weights:
  yields (run, sde, sampling_eps)."""
  config_checks.check_training(config, model, plumbing.torchrun_rank()[1])
  with Run(config, workdir) as run:
    run.seed(config, 0)
    yield (run, *sde_lib.get_sde(config))


# ---------------------------------------------------------------------------------------------- score model


@register_trainer('score')
def train_score(config, workdir):
  """Train the score model of `config` in `workdir` (resuming when it holds checkpoints)."""
  with training_run(config, workdir, 'score') as (run, sde, sampling_eps):
    score_model = mutils.create_model(config)
    ema = new_ema(config, score_model)
    optimizer = losses.get_optimizer(config, score_model.parameters())
    initial_step = resume_step(run, score_model, optimizer, ema)
    if initial_step == 0 and config.model.get('score_restore_path', None):
      # --restore on the score trainer: start from those EMA weights with a fresh optimizer, as the original.
      path = plumbing.require_checkpoint_file(config.model.score_restore_path, 'model.score_restore_path',
                                              '--restore')
      ckpt.restore_score_model(path, score_model, ema, run.device)
      if run.is_main:
        logging.info('Initialised from %s', config.model.score_restore_path)
    run.seed(config, initial_step)
    state = dict(model=run.wrap(score_model), optimizer=optimizer, ema=ema, step=initial_step)
    step_options = dict(reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
                        likelihood_weighting=config.training.likelihood_weighting,
                        eps=loss_eps(config, losses.SCORE_LOSS_EPS), weighting=config.model.get('weighting_dsm', 1))
    train_step = losses.get_step_fn(sde, True, losses.optimization_manager(config), **step_options)
    eval_step = losses.get_step_fn(sde, False, **step_options)
    train_batches = iter(run.data(config, 'train', initial_step))
    eval_batches = iter(run.data(config, 'test', initial_step + 1))  # training options (flip, repeat), B34
    scaler = datasets.get_data_scaler(config)
    num_updates = config.training.n_iters + 1
    run.open_records()
    if run.is_main:
      logging.info('Score training: updates %d to %d, %d process(es), device %s', initial_step, num_updates,
                   run.world_size, run.device)
    report_start(run, initial_step, num_updates)
    if missing_snapshot(run, config, initial_step):
      snapshot_samples(run, config, sde, sampling_eps, score_model, ema, initial_step)
    run.start_progress(initial_step, num_updates, 'score')

    for step in range(initial_step, num_updates):
      batch = scaler(next(train_batches)[0].to(run.device))
      loss = train_step(state, batch)
      if step % config.training.log_freq == 0:
        report_loss(run, 'training_loss', loss, step, lr=optimizer.param_groups[0]['lr'])
      if step % config.training.eval_freq == 0:
        eval_batch = scaler(next(eval_batches)[0].to(run.device))
        eval_loss = run.mean(eval_step(dict(model=score_model, ema=ema), eval_batch))
        log_value(run, 'eval_loss', eval_loss, step)
      completed = step + 1
      if completed % config.training.snapshot_freq == 0 or completed == num_updates:
        ensure_finite(run, run.mean(loss), step, 'The training loss')
        save_training_checkpoint(run, config, score_model, optimizer, completed, ema)
        if config.training.snapshot_sampling:
          snapshot_samples(run, config, sde, sampling_eps, score_model, ema, completed)
      run.progress.update(1)


def report_start(run, initial_step, num_updates):
  if run.is_main and initial_step >= num_updates:
    logging.info('Nothing to do: %s already holds the final checkpoint (step %d).', run.ckpt_dir, initial_step)


def report_loss(run, tag, loss, step, lr=None):
  """Log a training loss (mean over ranks) and stop on NaN/inf."""
  value = run.mean(loss)
  log_value(run, tag, value, step)
  if lr is not None:
    run.scalar('lr', lr, step)
  ensure_finite(run, value, step, 'The training loss')


def log_value(run, tag, value, step, fmt='%.5e'):
  if run.is_main:
    logging.info('step: %d, %s: ' + fmt, step, tag, value)
    run.scalar(tag, value, step)
    run.progress.set_postfix({tag: f'{value:.4g}'}, refresh=False)


def snapshot_samples(run, config, sde, sampling_eps, score_model, ema, step):
  """Unconditional samples with the EMA weights -> samples/iter_<step>/sample.npy and sample.png, as the original."""
  try:
    import sampling
  except ImportError as error:
    logging.warning('Snapshot sampling skipped (%s)', error)
    return
  shape = (config.training.batch_size // run.world_size, config.data.num_channels, config.data.image_size,
           config.data.image_size)
  sampling_fn = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), sampling_eps)
  with ema_weights(ema, score_model.parameters()):
    samples, _ = sampling_fn(score_model)
  if run.world_size > 1:
    gathered = [torch.empty_like(samples) for _ in range(run.world_size)]
    dist.all_gather(gathered, samples.contiguous())
    samples = torch.cat(gathered)
  if not run.is_main:
    return
  folder = snapshot_folder(run, step)
  images = samples.clamp(0, 1)
  fileio.atomic_write(os.path.join(folder, 'sample.png'),
                        lambda file: fileio.save_png_grid(images, file, int(np.sqrt(len(images)))))
  fileio.atomic_write(os.path.join(folder, 'sample.npy'), lambda file: np.save(file, fileio.to_uint8(images)))


def snapshot_folder(run, step):
  return os.path.join(run.workdir, 'samples', f'iter_{step}')


def missing_snapshot(run, config, step):
  """True when a resumed run's starting checkpoint has no snapshot samples (the kill came between the two)."""
  return (step > 0 and config.training.snapshot_sampling
          and not os.path.isfile(os.path.join(snapshot_folder(run, step), 'sample.npy')))


# ---------------------------------------------------------------------------------------------- classifier


def load_frozen_score_model(run, config):
  """The score model from config.model.score_restore_path with its EMA weights, eval mode, no gradients."""
  path = config.model.get('score_restore_path', None)
  if not path:
    raise ValueError('Classifier training needs a trained score model: pass --restore <score checkpoint> '
                     '(or set config.model.score_restore_path).')
  plumbing.require_checkpoint_file(path, 'model.score_restore_path', '--restore')
  score_model = mutils.create_model(config)
  ckpt.restore_score_model(path, score_model, new_ema(config, score_model), run.device,
                           config_hint='the model.* fields of the classifier config')
  score_model.eval().requires_grad_(False)
  if run.is_main:
    logging.info('Score model restored from %s (EMA weights)', path)
  return score_model


@register_trainer('classifier')
def train_classifier(config, workdir):
  """Train the noise-conditioned classifier of `config` with the objective named by config.model.loss_type
  (losses.CLASSIFIER_OBJECTIVES: ce, dlsm, total)."""
  with training_run(config, workdir, 'classifier') as (run, sde, sampling_eps):
    score_model = load_frozen_score_model(run, config)
    classifier = mutils.create_classifier(config)
    optimizer = losses.get_optimizer(config, classifier.parameters())
    initial_step = resume_step(run, classifier, optimizer)
    run.seed(config, initial_step)
    eps = loss_eps(config, sampling_eps)
    state = dict(model=run.wrap(classifier), score_model=score_model, optimizer=optimizer, step=initial_step)
    objective = losses.get_classifier_objective(config.model, sde, eps)
    train_step = losses.get_classifier_step_fn(objective, losses.optimization_manager(config))
    correct_fn = losses.get_classifier_accuracy_fn(sde, eps)
    train_batches = iter(run.data(config, 'train', initial_step))
    test_batches = run.data(config, 'test', 0, batch_size=config.eval.batch_size, repeat=False, shuffle=False)
    scaler = datasets.get_data_scaler(config)
    num_updates = config.training.n_iters + 1
    run.open_records()
    if run.is_main:
      logging.info('Classifier training (%s loss): updates %d to %d, %d process(es), device %s',
                   config.model.loss_type, initial_step, num_updates, run.world_size, run.device)
    report_start(run, initial_step, num_updates)
    run.start_progress(initial_step, num_updates, f'classifier ({config.model.loss_type})')

    for step in range(initial_step, num_updates):
      images, labels = next(train_batches)
      loss = train_step(state, scaler(images.to(run.device)), labels.to(run.device))
      if step % config.training.log_freq == 0:
        report_loss(run, 'loss', loss, step, lr=optimizer.param_groups[0]['lr'])
      completed = step + 1
      if completed % config.training.snapshot_freq == 0 or completed == num_updates:
        ensure_finite(run, run.mean(loss), step, 'The training loss')
        save_training_checkpoint(run, config, classifier, optimizer, completed)
      if step % config.training.eval_freq == 0:
        accuracy = evaluate_accuracy(run, classifier, correct_fn, test_batches, scaler)
        log_value(run, 'eval_acc', accuracy, step, fmt='%.2e')
      run.progress.update(1)


def evaluate_accuracy(run, classifier, correct_fn, test_batches, scaler):
  """Accuracy in % over one pass of the test batches at t = eps for every image (the original's protocol), summed
  over the ranks."""
  counts = torch.zeros(2, dtype=torch.float64, device=run.device)
  for images, labels in test_batches:
    labels = labels.to(run.device)
    counts[0] += correct_fn(classifier, scaler(images.to(run.device)), labels)
    counts[1] += len(labels)
  correct, total = run.total(counts).tolist()
  return 100. * correct / total


def train(config, workdir, model='score'):
  """Dispatch on --model: 'score' or 'classifier'."""
  if model not in TRAINERS:
    raise ValueError(f'--model={model!r}; expected one of {sorted(TRAINERS)}.')
  TRAINERS[model](config, workdir)
