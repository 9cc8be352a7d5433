"""The paper's comparison, shared by the toy, digits and the benchmarks: its methods (a classifier objective and a
guidance scale each), their row labels, and the one Markdown table writer of the results."""
import collections

import numpy as np

Method = collections.namedtuple('Method', 'name loss scale')
# The guided methods: a classifier trained with `loss` (a losses.CLASSIFIER_OBJECTIVES name) guiding at `scale`;
# None is the data set's scaling baseline, config.eval.scaling_baseline (λ > 1).
METHODS = (
    Method('base', 'ce', 1.0),
    Method('scaling', 'ce', None),
    Method('dlsm', 'dlsm', 1.0),
    Method('ours', 'total', 1.0),
)
# The paper's row labels; {scale} is the scaling baseline's λ ('= 10') or '> 1' where no λ is given.
ROW_LABELS = {
    'base': '(a) Base (CE)',
    'scaling': '(b) Scaling (CE, λ {scale})',
    'posterior_sm': '(c) Posterior SM',
    'dlsm': "(d') DLSM only",
    'ours': '(d) Ours (total loss)',
    'oracle': '(e) Oracle',
}


def method_losses():
  """The classifier objectives the methods need, each once, in the methods' order."""
  return tuple(dict.fromkeys(method.loss for method in METHODS))


def method_scale(method, scaling_baseline):
  """The guidance scale λ of `method`: its own, or the scaling baseline's."""
  return scaling_baseline if method.scale is None else method.scale


def row_label(name, scaling_baseline=None):
  """The paper's label of the row `name`, the scaling baseline's λ filled in."""
  scale = '> 1' if scaling_baseline is None else f'= {scaling_baseline:g}'
  return ROW_LABELS[name].format(scale=scale)


def markdown_table(head, rows):
  """A Markdown table: the head's cells, the rule, then one line per row of cells (strings)."""
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def mean_and_std(values):
  """(mean, std with ddof 0) of `values` as Python floats: a result over seeds."""
  return float(np.mean(values)), float(np.std(values))
