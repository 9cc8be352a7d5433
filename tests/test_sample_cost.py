"""The per-sample cost benchmark and the GPU check script, as a user runs them (no GPU here, nor in CI)."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the machine has a CUDA device: the check would run')
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
  result = subprocess.run(['bash', os.path.join(REPO, 'benchmarks', 'gpu_check.sh')], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines() == [
      'gpu_check.sh: no CUDA device (torch.cuda.is_available() is False); nothing measured']
  assert 'Traceback' not in result.stderr and not os.path.exists(os.path.join(REPO, 'results', 'gpu_check'))


def test_sample_cost_counts_evaluations_times_seconds(tmp_path):
  """A smoke run on small networks: one row per (sampler, mode), seconds per sample = NFE × s/eval / batch."""
  out = tmp_path / 'cost'
  result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'bench_sample_cost.py'), '--quick',
                           '--batch', '2', '--rounds', '1', '--samplers', 'dpmpp_2m@20', 'euler@10',
                           '--modes', 'fp32', 'bf16 all', '--out', str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert result.returncode == 0, result.stderr
  with open(out / 'bench_sample_cost.json') as file:
    rows = json.load(file)['rows']
  assert [(r['sampler'], r['mode'], r['nfe']) for r in rows] == [
      ('dpmpp_2m', 'fp32', 20), ('dpmpp_2m', 'bf16 all', 20), ('euler', 'fp32', 10), ('euler', 'bf16 all', 10)]
  for row in rows:
    assert row['seconds_per_evaluation'] > 0 and row['vs_original'] is None
    assert row['seconds_per_sample'] == pytest.approx(row['nfe'] * row['seconds_per_evaluation'] / 2)
  assert len(result.stdout.strip().splitlines()) == 1 + len(rows)
