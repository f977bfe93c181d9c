"""nni-adabert: AdaBERT (task-adaptive BERT compression by differentiable NAS) for NNI 3.0."""

from .logs import silence_library_noise

__version__ = "0.1.0"

silence_library_noise()
