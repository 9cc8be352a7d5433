"""The moons results table: this run's E[D_P], E[D_L], precision and recall per method beside the paper's."""
import json
import os

import tables
from toy import CLASS_NAMES

TABLE_ROWS = ('base', 'scaling', 'posterior_sm', 'dlsm', 'ours', 'ours_original_sampler', 'oracle')
TOY_ROW_LABELS = {'ours_original_sampler': '(d) Ours, original sampler (T1)'}  # beside the paper's (tables.py)
# The paper's moons table (Chao et al., ICLR 2022), values for class c1 / c2.
PAPER_TABLE = {
    'base': {'D_P': (0.198, 0.197), 'D_L': (0.190, 0.181), 'precision': (0.94, 0.93), 'recall': (1.00, 1.00)},
    'scaling': {'D_P': (2.734, 2.627), 'D_L': (2.730, 2.618), 'precision': (0.95, 0.94), 'recall': (0.97, 0.97)},
    'posterior_sm': {'D_P': (0.063, 0.060), 'D_L': None, 'precision': (0.97, 0.97), 'recall': (1.00, 1.00)},
    'ours': {'D_P': (0.066, 0.064), 'D_L': (0.052, 0.052), 'precision': (0.96, 0.95), 'recall': (1.00, 1.00)},
    'oracle': {'D_P': (0., 0.), 'D_L': (0., 0.), 'precision': (1.00, 1.00), 'recall': (1.00, 1.00)},
}
TABLE_COLUMNS = (('D_P', 'E[D_P]', '{:.3f}'), ('D_L', 'E[D_L]', '{:.3f}'),
                 ('precision', 'Precision', '{:.2f}'), ('recall', 'Recall', '{:.2f}'))


def format_table(rows, scale=None):
  """Markdown table from {method: {'D_P': (c1, c2) | None, 'D_L': …, 'precision': …, 'recall': …}}, in the paper's
  row order; methods missing from `rows` are skipped, missing values print as '-'. `scale`: the scaling baseline's λ."""
  head = ['method'] + [f'{title} (c1 / c2)' for _, title, _ in TABLE_COLUMNS]
  return tables.markdown_table(head, [[TOY_ROW_LABELS.get(key) or tables.row_label(key, scale)] + _cells(rows[key])
                                      for key in TABLE_ROWS if key in rows])


def _cells(row):
  cells = []
  for column, _, fmt in TABLE_COLUMNS:
    pair = row.get(column)
    cells.append('-' if pair is None else ' / '.join(fmt.format(v) for v in pair))
  return cells


def paper_ordering_holds(rows):
  """E[D_P] ours < base < scaling for every class, the paper's claim on the moons."""
  return all(rows['ours']['D_P'][c] < rows['base']['D_P'][c] < rows['scaling']['D_P'][c]
             for c in range(len(CLASS_NAMES)))


def write_table(results, workdir):
  """Write results['rows'] as toy_table.md (ours, then the paper's) and all of `results` as toy_table.json."""
  scale = results.get('scaling_factor')
  markdown = '\n'.join(['## Moons, this run', '', format_table(results['rows'], scale), '',
                        '## Paper (Chao et al., ICLR 2022, moons table)', '', format_table(PAPER_TABLE), ''])
  paths = os.path.join(workdir, 'toy_table.md'), os.path.join(workdir, 'toy_table.json')
  with open(paths[0], 'w') as f:
    f.write(markdown)
  with open(paths[1], 'w') as f:
    json.dump(results, f, indent=2)
  return paths
