"""Moons experiment: shared defaults (the original toy configs' settings), the six training stages, and
`stage_config` turning a pipeline config into the config one stage trains with (through main.py / run_lib).

Field names follow the CIFAR configs where the meaning is the same: the toy's std_min / std_max are
model.sigma_min / sigma_max of a VE SDE, its loss powers model.weighting_dsm / weighting_dlsm / weighting_ce,
its training.loss is model.loss_type, its eval-time std is model.std.
"""
import ml_collections

# name -> what the stage trains ('score' or 'classifier' = main.py --model) and on which data / loss.
STAGES = {
  'score': dict(model='score', subset='all'),
  'score_upper': dict(model='score', subset='upper'),
  'score_lower': dict(model='score', subset='lower'),
  'classifier_ce': dict(model='classifier', subset='all', loss_type='ce', coef=1.0),
  'classifier_dlsm': dict(model='classifier', subset='all', loss_type='dlsm', coef=1.0),
  'classifier_total': dict(model='classifier', subset='all', loss_type='total', coef=0.125),
}
# The original configs: n_iters (the loop runs n_iters + 1 updates), batch size, Adam learning rate.
PAPER_TRAINING = {
  'score': (40001, 4000, 6.5e-4),
  'score_upper': (40001, 4000, 6.5e-4),
  'score_lower': (40001, 4000, 6.5e-4),
  'classifier_ce': (40001, 4000, 1e-5),
  'classifier_dlsm': (40001, 4000, 2e-5),
  'classifier_total': (40001, 4000, 1e-5),
}


def get_default_configs():
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = 'vesde'
  training.continuous = True
  training.reduce_mean = True  # DSM averaged over the B x 2 elements, without the 1/2 (T9)
  training.likelihood_weighting = False
  training.eps = 0.  # t = torch.rand(B) exactly: sigma log-uniform in [sigma_min, sigma_max), as the original
  training.batch_size = 4000
  training.n_iters = 40001
  training.snapshot_freq = 5000
  training.log_freq = 500
  training.eval_freq = 5000
  training.snapshot_sampling = False  # no image grids for 2-D data
  training.keep_checkpoints = 0

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'moons'  # toy.data.moons_dataset(data.subset)
  data.subset = 'all'  # 'all', 'upper' (class 0) or 'lower' (class 1)
  data.num_channels = 2
  data.centered = False
  data.random_flip = False
  data.uniform_dequantization = False

  config.model = model = ml_collections.ConfigDict()
  model.name = 'toy_score'
  model.nf = 16
  model.sigma_min = 1e-3  # std_min
  model.sigma_max = 10.  # std_max
  model.num_scales = 1000
  model.std = 7.5  # the noise level of the metrics, plots and PRDC reference set
  model.ema_rate = 0.  # the toy has no EMA: the shadow equals the weights
  model.dropout = 0.
  model.weighting_dsm = 2
  model.weighting_dlsm = 2
  model.weighting_ce = 0
  model.coef = 1.0
  model.loss_type = 'total'
  model.scaling_factor = 1  # not read (B36); the guidance scale is sampling.scaling_factor
  model.score_restore_path = None
  model.classifier_restore_path = None

  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.name = 'toy_classifier'
  classifier.nf = 16
  classifier.classes = 2

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 5e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0
  optim.warmup = 0
  optim.grad_clip = -1.  # no clipping

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'annealed_pc'  # or 'original': the original's degenerate sampler (T1)
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.num_steps = 1000
  sampling.sigma_extra_min = 0.01  # annealed sampler: last noise level above model.std
  sampling.eps = 1e-5  # end of its time grid
  sampling.scaling_factor = 1.0  # guidance scale of the classifier methods
  sampling.epsilon = 3.5  # original sampler: step sqrt(2 epsilon), noise epsilon * noise_std
  sampling.noise_std = 1.0
  sampling.width = 40.  # evaluation grid [-width, width] x [-height, height], density² points
  sampling.height = 25.
  sampling.density = 35

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 10000  # classifier accuracy during training: all points at t = training.eps
  evaluate.num_samples = 10000  # generated points per class
  evaluate.nearest_k = 5
  evaluate.scaling_baseline = 10.  # guidance scale of the scaling baseline (CE classifier; 10 as on CIFAR)
  evaluate.compare_original_sampler = True  # also sample 'ours' with the original sampler (T1) for the plots

  config.stages = ml_collections.ConfigDict()
  for name, (n_iters, batch_size, lr) in PAPER_TRAINING.items():
    config.stages[name] = ml_collections.ConfigDict(dict(n_iters=n_iters, batch_size=batch_size, lr=lr))

  config.seed = 42
  config.device = 'auto'
  return config


def stage_config(config, stage):
  """The training config of one stage (a key of STAGES) of a pipeline config."""
  stage_spec, schedule = STAGES[stage], config.stages[stage]
  training_config = ml_collections.ConfigDict(config.to_dict())
  training_config.data.subset = stage_spec['subset']
  training_config.training.n_iters = schedule.n_iters
  training_config.training.batch_size = schedule.batch_size
  training_config.optim.lr = schedule.lr
  if stage_spec['model'] == 'classifier':
    training_config.model.loss_type = stage_spec['loss_type']
    training_config.model.coef = stage_spec['coef']
  return training_config
