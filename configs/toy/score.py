"""Stage 'score' of the moons experiment (the original toy config's settings); train with
`python main.py --config configs/toy/score.py --model score --workdir toy_score`."""
from configs.toy.default_toy_configs import get_default_configs, stage_config


def get_config():
  return stage_config(get_default_configs(), 'score')
