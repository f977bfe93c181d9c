"""nni-adabert: AdaBERT (task-adaptive BERT compression by differentiable NAS) for NNI 3.0."""

__version__ = "0.1.0"
