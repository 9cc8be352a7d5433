"""Stage 'classifier_dlsm' of the moons experiment (the original toy config's settings); train with
`python main.py --config configs/toy/classifier_dlsm.py --model classifier --workdir toy_classifier_dlsm --restore <score checkpoint>`."""
from configs.toy.default_toy_configs import get_default_configs, stage_config


def get_config():
  return stage_config(get_default_configs(), 'classifier_dlsm')
