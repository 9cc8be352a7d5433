"""Networks of dlsm. Importing the package registers `ncsnpp` and `classifier` (nothing is compiled, no TensorFlow)."""
from models import ncsnpp, resnet_cond  # noqa: F401  (registration side effects)
