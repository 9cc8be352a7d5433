"""The digits classifier trained with the 'dlsm' loss."""
from configs.digits.classifier import get_classifier_config


def get_config():
  return get_classifier_config('dlsm')
