"""The whole moons pipeline at the paper's settings (the original toy configs'): six stages of 40 001
updates at batch 4 000, 1 000-step sampling of 10 000 points per class. `python run_lib_toy.py --config configs/toy/paper.py --workdir
toy_paper` (hours on a CPU, minutes on a GPU)."""
from configs.toy.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs()
