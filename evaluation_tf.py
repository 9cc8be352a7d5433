"""The TensorFlow side of the evaluation: TF-GAN's Inception module, served in a process of its own, and tensorflow-gan.

`python evaluation_tf.py <inception_dir>` loads the module and then answers requests on its standard streams: each
request is one uint8 NHWC image batch, each answer its `pool_3` and `logits` (float32, flattened to 2-D). This file
imports no PyTorch, so TensorFlow never shares a process with it (TensorFlow 2.21 loaded before triton crashes the
process); `evaluation.InceptionProcess` is the client. Frames: one JSON line {"dtype", "shape"}, then the raw bytes.
"""

import json
import os
import sys

import numpy as np

INCEPTION_OUTPUTS = ('pool_3', 'logits')


def tensorflow():
  """TensorFlow, quiet; GPU memory grows on demand so that PyTorch can share the device."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  for gpu in tf.config.list_physical_devices('GPU'):
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # devices already initialised by an earlier call
      pass
  return tf


# ---------------------------------------------------------------------------------------------------------------
# Frames on a byte stream


def write_array(stream, array):
  array = np.ascontiguousarray(array)
  header = json.dumps({'dtype': array.dtype.str, 'shape': list(array.shape)})
  stream.write(header.encode('ascii') + b'\n')
  stream.write(array.tobytes())
  stream.flush()


def read_array(stream):
  """The next array of the stream, or None at its end."""
  header = stream.readline()
  if not header:
    return None
  meta = json.loads(header)
  dtype, shape = np.dtype(meta['dtype']), tuple(meta['shape'])
  size = dtype.itemsize * int(np.prod(shape))
  data = stream.read(size)
  if len(data) != size:
    raise EOFError(f'stream ended inside an array of {size} bytes')
  return np.frombuffer(data, dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# The Inception module


def load_inception_module(inception_dir):
  """`run(images_uint8) -> (pool_3, logits)` of the module in `inception_dir`, as the original calls it.

  tensorflow_hub.load of a local folder is tf.saved_model.load (the same loader, v1 tags handled); TF-GAN's
  run_classifier_fn with one batch is a plain call of the classifier function, so neither library is needed here.
  """
  tf = tensorflow()
  module = tf.saved_model.load(inception_dir, tags=_module_tags(inception_dir))

  @tf.function
  def run(images):
    images = (tf.cast(images, tf.float32) - 127.5) / 127.5  # [-1, 1] at 32x32; the module resizes internally
    outputs = module(images)
    return tuple(tf.reshape(outputs[key], [tf.shape(outputs[key])[0], -1]) for key in INCEPTION_OUTPUTS)
  return lambda images: tuple(output.numpy() for output in run(tf.constant(images)))


def _module_tags(inception_dir):
  """A TF1 Hub-format module (tfhub_module.pb beside the SavedModel) is loaded with its empty tag set."""
  return [] if os.path.isfile(os.path.join(inception_dir, 'tfhub_module.pb')) else None


def serve(inception_dir, requests, answers):
  """Answer every image batch of `requests` with its features on `answers`, until `requests` ends."""
  run = load_inception_module(inception_dir)
  import tensorflow as tf
  write_array(answers, np.frombuffer(tf.__version__.encode('ascii'), np.uint8))  # ready, and which TensorFlow
  while (images := read_array(requests)) is not None:
    for output in run(images):
      write_array(answers, output.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# tensorflow-gan's FID and IS (installed with TensorFlow 2.15 on Python 3.11 only)


def tfgan_fid(real, fake):
  """FID of two activation sets with tensorflow-gan's own function."""
  tensorflow()
  import tensorflow_gan as tfgan
  return float(tfgan.eval.frechet_classifier_distance_from_activations(real, fake).numpy())


def tfgan_inception_score(logits):
  """Inception score of all logits as one split, with tensorflow-gan's own function."""
  tensorflow()
  import tensorflow_gan as tfgan
  return float(tfgan.eval.classifier_score_from_logits(logits).numpy())


def main(argv):
  answers = os.fdopen(os.dup(sys.stdout.fileno()), 'wb')
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints of the libraries must not corrupt the answers
  serve(argv[1], sys.stdin.buffer, answers)


if __name__ == '__main__':
  main(sys.argv)
