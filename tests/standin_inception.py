"""`python tests/standin_inception.py DIR` saves a stand-in for TF-GAN's Inception module in DIR (run by the tests in a
process of their own, so that TensorFlow never loads into the test process beside PyTorch).

The real Inception weights are not available offline, so the stand-in is saved in the same TF2 SavedModel / TF-Hub
format: called on float32 NHWC images in [-1, 1] of any size, it returns a dict with `pool_3` ([B, 1, 1, D]) and
`logits` ([B, L]) like TF-GAN's `tfgan/eval/inception/1`, plus an extra output that must be ignored.
"""

import sys

import numpy as np

POOL_DIM, NUM_LOGITS = 32, 12


def build_standin_inception(path):
  import tensorflow as tf

  class StandInInception(tf.Module):
    def __init__(self):
      super().__init__()
      rng = np.random.default_rng(0)
      self.to_pool = tf.Variable(rng.normal(size=(8 * 8 * 3, POOL_DIM)).astype(np.float32) / 8.0)
      self.to_logits = tf.Variable(rng.normal(size=(POOL_DIM, NUM_LOGITS)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
      small = tf.image.resize(images, [8, 8])  # the real module resizes internally too (to 299)
      pool = tf.tanh(tf.reshape(small, [-1, 8 * 8 * 3]) @ self.to_pool)
      return {'pool_3': tf.reshape(pool, [-1, 1, 1, POOL_DIM]), 'logits': pool @ self.to_logits,
              'mixed_7': tf.reduce_mean(small, axis=[1, 2])}
  tf.saved_model.save(StandInInception(), path)


if __name__ == '__main__':
  build_standin_inception(sys.argv[1])
