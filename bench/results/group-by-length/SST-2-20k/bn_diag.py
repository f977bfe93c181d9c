"""Diagnosis (bench/results/group-by-length/SST-2-20k): each retrained student's dev accuracy with its
BatchNorm running statistics as trained, and re-estimated (cumulative mean) over 200 plainly shuffled
train batches of 64 of the store, weights unchanged.

    PYTHONPATH=<checkout> python bn_diag.py RETRAIN_DIR [RETRAIN_DIR ...]
"""
import sys

import torch

from nni_adabert.model.pretrained import load_student
from nni_adabert.nas.distill import model_inputs
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.evaluate import dev_metrics
from nni_adabert.workflows.export import load_exported

torch.set_num_threads(1)
store = open_teacher_run("/work/exp/gl/teacher")
for run in sys.argv[1:]:
    student = load_student(load_exported(run, store)).eval()

    def logits(inputs):
        return student(**inputs, return_probes=False).logits

    before = dev_metrics(logits, store)["accuracy"]
    for module in student.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative mean over the batches below
    student.train()
    with torch.no_grad():
        for i, batch in enumerate(store.loader("train", 64, shuffle=True, seed=123)):
            if i == 200:
                break
            student(**model_inputs(batch), return_probes=False)
    student.eval()
    after = dev_metrics(logits, store)["accuracy"]
    print(run, "dev before", round(100 * before, 2), "after re-estimating BatchNorm", round(100 * after, 2))
