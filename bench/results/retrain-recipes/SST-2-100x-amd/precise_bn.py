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

CONFIG = RetrainConfig()


def accuracies(student, store) -> tuple[float, float]:
    """Dev accuracy (%) with the statistics as they are, then re-estimated (the retraining's callback)."""
    def score():
        student.eval()
        return round(100 * dev_metrics(lambda inputs: student(**inputs, return_probes=False).logits,
                                       store)["accuracy"], 2)

    as_trained = score()
    module = AdaBertDistillModule(store.meta["num_labels"], CONFIG)
    module.set_model(student)
    loader = row_loader(store.rows("train"), CONFIG.batch_size, shuffle=True, seed=CONFIG.seed)
    batches = (batch for _, batch in zip(range(CONFIG.precise_bn_batches), loader))
    recompute_batchnorm_statistics(module, batches, CONFIG.seed)
    return as_trained, score()


def saved_weights(checkpoints: str) -> list[tuple[int, int | None, dict]]:
    """``(epoch from 1, batch within it or None at its end, the student's weights)`` of each Lightning
    checkpoint in the folder ``checkpoints``, in file-name order (the copies are named by time)."""
    found = []
    for path in sorted(Path(checkpoints).glob("*.ckpt")):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        within = [state["batches"] for state in saved["callbacks"].values()
                  if isinstance(state, dict) and "batches" in state]
        weights = {k.removeprefix("_model."): v for k, v in saved["state_dict"].items() if k.startswith("_model.")}
        found.append((saved["epoch"] + 1, within[0] if within else None, weights))
    return found


def main(argv):
    torch.set_num_threads(2)
    store = open_teacher_run(argv[0])
    for spec in argv[1:]:
        run, _, checkpoints = spec.partition(":")
        student = load_student(load_exported(run, store))
        if checkpoints:
            ends = {epoch: weights for epoch, within, weights in saved_weights(checkpoints) if within is None}
            for epoch in sorted(ends):
                student.load_state_dict(ends[epoch])
                print(f"{run} epoch {epoch}: as trained, re-estimated: {accuracies(student, store)}", flush=True)
            student = load_student(load_exported(run, store))
        print(f"{run} exported: as trained, re-estimated: {accuracies(student, store)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
