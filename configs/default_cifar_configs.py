"""Defaults shared by every CIFAR config: the original's default fields and values, plus this project's extra fields.

Fields marked "parity" are the original's but read by no code path (here, as there); they are kept so that every
config holds the original's fields with their values (the golden flat configs compare them).
"""
import math

import ml_collections


def get_default_configs():
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300000
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.reduce_mean = False
  training.keep_checkpoints = 0  # newest training checkpoints kept on disk; 0 keeps all
  training.allow_tf32 = False  # TF32 on CUDA during training; False keeps exact float32

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.scaling_factor = 1.0  # guidance scale λ (--scale); a float, so later int assignments are cast to float
  sampling.conditional = False
  sampling.dtype = 'float32'  # 'bfloat16' opts into reduced-precision sampling
  sampling.classifier_dtype = 'float32'  # 'bfloat16': the classifier's forward and input-gradient under autocast too
  sampling.compile = False  # torch.compile the networks for sampling
  sampling.seed = 0  # base seed of the per-(class, round) sampling seeds
  sampling.ode_rtol = 1e-5  # tolerances of the probability-flow ODE solver (sampling.method = 'ode')
  sampling.ode_atol = 1e-5
  sampling.allow_negative_scale = False  # a negative scaling_factor is refused unless this is set
  sampling.grid = 'linear'  # time grid (time_grids.py): 'linear' in t (the original's), 'rho' or 'logsnr' in σ
  sampling.num_steps = 0  # grid points; 0: model.num_scales (the original)
  sampling.rho = 7.  # spacing of the 'rho' grid in σ
  sampling.guided_sigma_min = 0.  # guidance only where guided_sigma_min ≤ σ(t) ≤ guided_sigma_max
  sampling.guided_sigma_max = math.inf
  # The σ-space solvers' options (sampling.method = <name>: sampling.sample_<name>). With sampling.noise_removal their
  # last step goes to σ = 0, else they stop at σ(eps), one step fewer.
  sampling.heun = heun = ml_collections.ConfigDict()  # EDM's Algorithm 2
  heun.s_churn = 0.  # noise raised by γ = min(s_churn / N, √2 − 1) where s_tmin ≤ σ ≤ s_tmax; 0: Algorithm 1
  heun.s_tmin = 0.
  heun.s_tmax = math.inf
  heun.s_noise = 1.  # scale of the added noise
  sampling.dpmpp_2m = dpmpp_2m = ml_collections.ConfigDict()
  dpmpp_2m.eta = 0.  # Langevin strength: 0 the probability-flow ODE, 1 the reverse SDE, > 1 more mixing
  dpmpp_2m.s_noise = 1.
  dpmpp_2m.second_order_below = math.inf  # the 2M correction on steps from σ below this; above: first order
  sampling.dpmpp_3m_sde = dpmpp_3m_sde = ml_collections.ConfigDict()
  dpmpp_3m_sde.eta = 1.  # as dpmpp_2m's
  dpmpp_3m_sde.s_noise = 1.
  sampling.unipc = unipc = ml_collections.ConfigDict()
  unipc.order = 2  # of the predictor, 1 to 3; the corrector adds one
  unipc.variant = 'bh2'  # B(h) = 1 − e^{−h} ('bh2') or h ('bh1')
  unipc.corrector = True

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9  # parity: the base repository's checkpoint-sweep evaluation, absent from DLSM
  evaluate.end_ckpt = 26  # parity
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False  # parity
  evaluate.num_samples = 50000
  evaluate.enable_loss = True  # parity
  evaluate.enable_bpd = False  # parity
  evaluate.bpd_dataset = 'test'  # parity
  evaluate.inception_dir = ''  # local copy of the TF-GAN Inception module (tfgan/eval/inception/1)
  evaluate.samples_dir = ''  # CAS: folder holding <class>/samples_<r>.npz
  evaluate.cas_keep_checkpoints = 2  # CAS checkpoints kept on disk (B13)
  evaluate.cas_arch = 'resnet50'  # CAS network: 'resnet50' (the paper's); 'resnet18' / 'resnet10' for quick runs
  evaluate.posterior_sigmas = (0.5, 1., 2., 4.)  # --posterior: noise levels of the posterior-score errors (VE σ)
  evaluate.posterior_draws = 4  # --posterior: noisy copies of every test image per σ
  evaluate.features = 'inception'  # feature space of FID / PRDC: TF-GAN's Inception (digits: 'reference_classifier')

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  data.root = 'data'  # folder holding cifar-10-batches-py / cifar-100-python (--data_dir)

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 50
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'
  # 'none': NCSN++ returns F(x)/σ as the original; 'edm': the score (D - x)/σ² of Karras et al.'s denoiser
  # D = c_skip·x + c_out·F(c_in·x) for data of std model.sigma_data (NCSN++, Fourier σ embedding only)
  model.preconditioning = 'none'
  model.sigma_data = 0.5
  model.weighting_dlsm = 0
  model.weighting_ce = 0
  model.coef = 1.0
  model.loss_type = 'total'
  model.scaling_factor = 1  # parity: the guidance scale is sampling.scaling_factor (B36)
  model.score_restore_path = None
  model.classifier_restore_path = None

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.nf = 128
  classifier.embedding_type = 'fourier'  # parity: the classifier always embeds log σ with Fourier features
  classifier.fourier_scale = 16
  classifier.classes = 10
  classifier.noise_list = [0.0001, 0.3333, 0.6666, 0.9999]  # parity
  classifier.resnet_base_width = 64  # stage widths w, 2w, 4w, 8w; 64 is the original's fixed 64..512

  config.plot = plot = ml_collections.ConfigDict()
  plot.type = 'precision'  # parity

  config.seed = 42
  # 'auto' picks cuda when available, else cpu, when a script runs (models.utils.get_device), never at import.
  config.device = 'auto'

  return config


def set_ncsnpp_model(model):
  """The NCSN++ fields every CIFAR config sets: the base repository's VE "NCSN++ continuous deep" CIFAR-10 network."""
  model.name = 'ncsnpp'
  model.fourier_scale = 16
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = 'GroupNorm'  # parity: NCSN++ always uses GroupNorm
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 8
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'residual'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'  # parity: one attention type exists
  model.init_scale = 0.
  model.conv_size = 3  # parity: 3x3 convolutions are fixed


def set_sde(config, sde):
  """training.sde and the model settings it needs: 'vesde' keeps the DLSM settings; 'vpsde' / 'subvpsde' take those
  of score_sde's CIFAR-10 "ncsnpp_deep_continuous" VP / sub-VP configs (centred data, positional embedding, no σ
  scaling, no FIR, EMA 0.9999, Euler-Maruyama sampling without corrector, N = 1000, β from 0.1 to 20)."""
  config.training.sde = sde
  if sde == 'vesde':
    return config
  if sde not in ('vpsde', 'subvpsde'):
    raise ValueError(f'unknown SDE {sde!r} after the config file name: use vesde, vpsde or subvpsde')
  config.data.centered = True
  model = config.model
  model.scale_by_sigma, model.embedding_type, model.fir, model.ema_rate = False, 'positional', False, 0.9999
  model.num_scales, model.beta_min, model.beta_max = 1000, 0.1, 20.
  config.sampling.predictor, config.sampling.corrector = 'euler_maruyama', 'none'
  return config


def set_pc_sampler(sampling):
  """Predictor-corrector sampling as in every CIFAR config."""
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'


def set_class_evaluation(evaluate, num_samples=51000):
  """The eval section of the sampling/evaluation and CAS configs."""
  evaluate.batch_size = 200  # Inception batch (CAS: test batch)
  evaluate.num_samples = num_samples  # sampling: (num_samples // training.batch_size) // classes rounds per class
  evaluate.num_samples_all = 50000  # parity: the reference set is the whole training split (B15)
  evaluate.mode = 'class'  # parity: --mode decides
  evaluate.class_id = 0  # parity: --classid decides
  evaluate.class_id_end = 1  # parity: --classidend decides
  evaluate.batch_splits = 5  # parity: the original's CIFAR-10 Inception chunks; here eval.batch_size batches
  evaluate.nearest_k = 3  # PRDC neighbourhood size
  evaluate.freq = 5  # parity


def set_resnet_cond_classifier(classifier, model, classes):
  """The time-conditioned ResNet classifier (`resnet18_cond` / `resnet34_cond`) with a 32-wide time embedding."""
  classifier.name = 'classifier'
  classifier.model = model
  classifier.nf = 32
  classifier.classes = classes
