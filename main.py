"""Train a score model or a noise-conditioned classifier (spec §5.1).

  python main.py --config configs/score/cifar10_score_configs.py --model score --workdir score_cifar10
  python main.py --config configs/classifier/cifar10_classifier_resnet18_cond_configs.py --model classifier \
      --workdir classifier_cifar10_ours_resnet18_cond --restore results/score_cifar10/checkpoints/checkpoint_<step>.pth
  torchrun --nproc_per_node=K main.py ...   (DistributedDataParallel; training.batch_size is the global batch)

The run folder is results/<workdir>; a restarted command resumes from its newest checkpoint.
"""
import os
import sys

from absl import app, flags
from ml_collections.config_flags import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run folder name; the run lives in results/<workdir>.')
flags.DEFINE_enum('model', 'score', ['score', 'classifier'], 'What to train: the score model or the classifier.')
flags.DEFINE_string('restore', None, 'Score checkpoint to start from (score) or to guide with (classifier); '
                    'overrides config.model.score_restore_path only when given.')
flags.DEFINE_string('data_dir', None, 'Folder holding cifar-10-batches-py / cifar-100-python; overrides '
                    'config.data.root only when given.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import torch.distributed as dist
  import losses
  import run_lib

  config = FLAGS.config
  if FLAGS.restore is not None:  # B2: the config's path stays in force when the flag is absent
    config.model.score_restore_path = FLAGS.restore
  if FLAGS.data_dir is not None:
    config.data.root = FLAGS.data_dir
  workdir = os.path.join('results', FLAGS.workdir)
  # missing files / data, config or checkpoint mismatches, unknown registry names, a diverged loss
  expected_errors = (FileNotFoundError, ValueError, KeyError, losses.NonFiniteLossError)
  try:
    run_lib.train(config, workdir, FLAGS.model)
  except expected_errors as error:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)
  finally:
    if dist.is_initialized():
      dist.destroy_process_group()


if __name__ == '__main__':
  app.run(main)
