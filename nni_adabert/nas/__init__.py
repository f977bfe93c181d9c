"""The search: the AdaBERT objective, the straight-through supernet modules, the one-shot
strategy, and the distillation module NNI's ``Lightning`` evaluator trains."""
