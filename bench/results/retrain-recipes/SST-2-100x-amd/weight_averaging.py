"""Weight averaging after the fact (bench/results/retrain-recipes/SST-2-100x-amd): the dev accuracy of the
mean of a retraining's last N saved weights (checkpoints at epoch ends and within epochs, then the exported
student), as averaged and with BatchNorm re-estimated as ``--precise-bn-batches 200`` does
(:func:`precise_bn.accuracies`). CHECKPOINTS: Lightning files copied from the run's
``retrain/checkpoints/last.ckpt`` as they were written.

    PYTHONPATH=<checkout> python weight_averaging.py TEACHER_RUN RUN CHECKPOINTS
"""
import sys

import torch

from nni_adabert.model.pretrained import load_student
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.export import load_exported
from precise_bn import accuracies, saved_weights

LAST = 5  # the longest tail averaged


def average(states: list[dict]) -> dict:
    """The mean of each floating-point tensor over ``states`` (in float64), others from the first."""
    return {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def main(teacher_run, run, checkpoints):
    torch.set_num_threads(2)
    store = open_teacher_run(teacher_run)
    student = load_student(load_exported(run, store))
    points = [(f"e{epoch}" + (f"@{within}" if within is not None else "end"), weights)
              for epoch, within, weights in saved_weights(checkpoints)]
    points.append(("final", {k: v.clone() for k, v in student.state_dict().items()}))
    print([label for label, _ in points], flush=True)
    for n in range(1, min(LAST, len(points)) + 1):
        chosen = points[-n:]
        student.load_state_dict(average([weights for _, weights in chosen]))
        before, after = accuracies(student, store)
        print(f"mean of last {n} {[label for label, _ in chosen]}: as averaged {before}, re-estimated {after}",
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
