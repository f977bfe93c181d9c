"""PreciseBN, after the fact (bench/results/retrain-recipes/SST-2-100x-amd): the dev accuracy of retrained
students with BatchNorm's running statistics as trained (moving averages) and re-estimated over 200 plainly
shuffled train batches by the retraining's own code (``training.recompute_batchnorm_statistics``, as
``--precise-bn-batches 200`` does before each dev evaluation), weights unchanged. Each RUN is a retraining
made without PreciseBN; ``RUN:CHECKPOINTS`` also scores each epoch-end checkpoint (Lightning files copied
from the run's ``retrain/checkpoints/last.ckpt`` as they were written) in the folder CHECKPOINTS.

    PYTHONPATH=<checkout> python precise_bn.py TEACHER_RUN RUN[:CHECKPOINTS] [RUN[:CHECKPOINTS] ...]
"""
import sys
from pathlib import Path

import torch

from nni_adabert.config import RetrainConfig
from nni_adabert.model.pretrained import load_student
from nni_adabert.nas.distill import AdaBertDistillModule
from nni_adabert.teacher.knowledge import row_loader
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.training import recompute_batchnorm_statistics
from nni_adabert.workflows.evaluate import dev_metrics
from nni_adabert.workflows.export import load_exported

torch.set_num_threads(2)
store = open_teacher_run(sys.argv[1])
config = RetrainConfig()


def accuracies(student) -> tuple[float, float]:
    """Dev accuracy (%) with the statistics as they are, then re-estimated (the retraining's callback)."""
    def score():
        student.eval()
        return round(100 * dev_metrics(lambda inputs: student(**inputs, return_probes=False).logits,
                                       store)["accuracy"], 2)

    as_trained = score()
    module = AdaBertDistillModule(store.meta["num_labels"], config)
    module.set_model(student)
    loader = row_loader(store.rows("train"), config.batch_size, shuffle=True, seed=config.seed)
    batches = (batch for _, batch in zip(range(config.precise_bn_batches), loader))
    recompute_batchnorm_statistics(module, batches, config.seed)
    return as_trained, score()


for spec in sys.argv[2:]:
    run, _, checkpoints = spec.partition(":")
    student = load_student(load_exported(run, store))
    if checkpoints:
        ends = {}
        for path in sorted(Path(checkpoints).glob("*.ckpt")):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not any("batches" in state for state in saved["callbacks"].values() if isinstance(state, dict)):
                ends[saved["epoch"] + 1] = {k.removeprefix("_model."): v for k, v in saved["state_dict"].items()
                                            if k.startswith("_model.")}
        for epoch in sorted(ends):
            student.load_state_dict(ends[epoch])
            print(f"{run} epoch {epoch}: as trained, re-estimated: {accuracies(student)}", flush=True)
        student = load_student(load_exported(run, store))
    print(f"{run} exported: as trained, re-estimated: {accuracies(student)}", flush=True)
