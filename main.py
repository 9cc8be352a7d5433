"""Train a score model or a noise-conditioned classifier, with the original's command line.

  python main.py --config configs/score/cifar10_score_configs.py --model score --workdir score_cifar10
  python main.py --config configs/classifier/cifar10_classifier_resnet18_cond_configs.py --model classifier \
      --workdir classifier_cifar10_ours_resnet18_cond --restore results/score_cifar10/checkpoints/checkpoint_<step>.pth
  torchrun --nproc_per_node=K main.py ...   (DistributedDataParallel; training.batch_size is the global batch)

The run folder is results/<workdir>; a restarted command resumes from its newest intact checkpoint. One run at a
time per folder (results/<workdir>/run.lock); every expected failure is one line on stderr and exit status 1.
"""
import os

from absl import flags

import plumbing

FLAGS = flags.FLAGS


def define_flags():
  plumbing.define_run_flags('Training configuration file.', data_dir=True)
  flags.DEFINE_enum('model', 'score', ['score', 'classifier'], 'What to train: the score model or the classifier.')
  flags.DEFINE_string('restore', None, 'Score checkpoint to start from (score) or to guide with (classifier); '
                      'overrides config.model.score_restore_path only when given.')


def main(argv):
  del argv
  import torch.distributed as dist
  import run_lib
  config = FLAGS.config
  # B2: the config's path stays in force when --restore is absent
  plumbing.apply_flag_overrides(config, {'model.score_restore_path': FLAGS.restore, 'data.root': FLAGS.data_dir})
  try:
    run_lib.train(config, os.path.join('results', FLAGS.workdir), FLAGS.model)
  finally:
    if dist.is_initialized():
      dist.destroy_process_group()


if __name__ == '__main__':
  define_flags()
  plumbing.run_script(main)
