"""Moons metrics: the oracle (exact scores of the noisy point sets), the distances D_P / D_L to it, class-wise PRDC.

D_P_c is the grid average of ‖oracle posterior score of class c − (prior score + λ·likelihood score)‖, D_L_c that of
‖oracle likelihood score − λ·likelihood score‖, at one noise level σ (7.5 in the paper).
"""
import numpy as np
import torch

import sampling
from mixture import mixture_score
from toy import CLASS_NAMES, full_sigma


def oracle_scores(positions, labels, x, sigma, eps=1e-8):
  """Oracle scores at x over the exact point sets (each point once, T4 fixed), float64 [P, 2] each.

  Keys as toy_oracle.pt: score_upper / score_lower / score_full and likelihood_score_<c> = score_c - score_full
  (= ∇ log p_sigma(y=c | x), the classes having equal priors).
  """
  positions, labels = torch.as_tensor(positions), torch.as_tensor(labels)
  oracle = {'score_full': mixture_score(x, positions, sigma, eps)}
  for c, name in enumerate(CLASS_NAMES):
    oracle[f'score_{name}'] = mixture_score(x, positions[labels == c], sigma, eps)
    oracle[f'likelihood_score_{name}'] = oracle[f'score_{name}'] - oracle['score_full']
  return oracle


@torch.no_grad()
def prior_score(score_fn, x, sigma):
  """score_fn(x, sigma) at one noise level for every row of x."""
  return score_fn(x, full_sigma(x, sigma))


def likelihood_score(classifier_fn, x, sigma, label, eps=0.):
  """∇_x log softmax(classifier_fn(x, sigma))[label]; eps = 0 (no 1e-8 in the log) as the original metric."""
  labels = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
  return sampling.log_prob_grad(classifier_fn, x, full_sigma(x, sigma), labels, eps=eps)


def mean_distance(a, b):
  """Grid average of the Euclidean distance between two fields, in float64."""
  return (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).norm(dim=-1).mean().item()


def classifier_distances(oracle, prior, likelihoods, scale=1.0):
  """D_full, D_P_<c>, D_L_<c> for a prior score field and per-class likelihood fields guided with `scale`."""
  metrics = {'D_full': mean_distance(oracle['score_full'], prior)}
  for name, likelihood in zip(CLASS_NAMES, likelihoods):
    metrics[f'D_P_{name}'] = mean_distance(oracle[f'score_{name}'], prior + scale * likelihood)
    metrics[f'D_L_{name}'] = mean_distance(oracle[f'likelihood_score_{name}'], scale * likelihood)
  return metrics


def posterior_sm_distances(oracle, class_scores):
  """D_P_<c> of the posterior-SM baseline: one score model per class."""
  return {f'D_P_{name}': mean_distance(oracle[f'score_{name}'], score)
          for name, score in zip(CLASS_NAMES, class_scores)}


def classwise_prdc(real_sets, fake_sets, nearest_k=5):
  """Precision / recall / density / coverage per class (prdc's definitions, evaluation.compute_prdc_chunked)."""
  import evaluation  # its TensorFlow is imported lazily, never by PRDC
  return [evaluation.compute_prdc_chunked(np.asarray(real, np.float32), np.asarray(fake, np.float32), nearest_k)
          for real, fake in zip(real_sets, fake_sets)]
