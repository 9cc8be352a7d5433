"""Moons plots: quiver plots of score fields and scatter plots of samples, per class (matplotlib, Agg backend)."""
import numpy as np
import torch

from toy import CLASS_NAMES


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_score_fields(grid, fields, path):
  """Quiver plots of score fields: fields = {title: (field_upper, field_lower)}, one column per title."""
  plt = _pyplot()
  grid = np.asarray(grid, np.float64)
  fig, axes = plt.subplots(2, len(fields), figsize=(4 * len(fields), 5.6), squeeze=False)
  for col, (title, per_class) in enumerate(fields.items()):
    for row, field in enumerate(per_class):
      field = np.asarray(torch.as_tensor(field, dtype=torch.float64))
      ax = axes[row, col]
      ax.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], color='C0' if row == 0 else 'C3')
      mean_norm = np.linalg.norm(field, axis=1).mean()  # arrows are scaled per panel
      ax.set_title(f'{title}: {CLASS_NAMES[row]} (mean |s| {mean_norm:.2f})', fontsize=9)
      ax.set_aspect('equal')
      ax.set_xticks([]), ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_samples(samples, path, limits=(45., 30.)):
  """Scatter plots: samples = {title: (points_upper, points_lower)}, one panel per title."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 3.2), squeeze=False)
  for ax, (title, per_class) in zip(axes[0], samples.items()):
    for c, points in enumerate(per_class):
      points = np.asarray(torch.as_tensor(points, dtype=torch.float64))
      ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.3, color='C0' if c == 0 else 'C3',
                 label=CLASS_NAMES[c])
    ax.set_xlim(-limits[0], limits[0]), ax.set_ylim(-limits[1], limits[1])
    ax.set_title(title, fontsize=9)
    ax.set_aspect('equal')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
