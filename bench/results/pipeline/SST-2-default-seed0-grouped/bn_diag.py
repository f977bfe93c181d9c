"""Diagnosis (bench/results/pipeline/SST-2-default-seed0-grouped): the seed-0 student's dev accuracy with its
BatchNorm running statistics re-estimated over 200 train batches of 64, weights unchanged: plainly shuffled or
grouped by length, as a cumulative mean (momentum None; ops.MaskedBatchNorm1d honours it since the commit after
022c4c3; at 2397815 it was a local change) or as the usual moving average (momentum 0.1, from reset), two loader seeds.

    PYTHONPATH=<checkout> python bn_diag.py"""
import torch
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.teacher.knowledge import row_loader
from nni_adabert.workflows.export import load_exported
from nni_adabert.model.pretrained import load_student
from nni_adabert.workflows.evaluate import dev_metrics
from nni_adabert.nas.distill import model_inputs


def recalibrate_batchnorm(model, loader, batches):
    """Running statistics reset, then a cumulative mean (momentum None) over ``batches`` batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == batches:
                break
            model(**model_inputs(batch), return_probes=False)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


store = open_teacher_run('/work/exp/full/teacher')
rows = store.rows("train")
def acc(grouped, seed, momentum_none=True, batches=200):
    s = load_student(load_exported('/work/exp/full/retrain-seed0', store)).eval()
    bns = [m for m in s.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not momentum_none:
        # EMA 0.1 from reset, as the first diagnostic did
        for m in bns: m.reset_running_stats()
        s.train()
        with torch.no_grad():
            for i, b in enumerate(row_loader(rows, 64, shuffle=True, seed=seed, group_by_length=grouped)):
                if i == batches: break
                s(**model_inputs(b), return_probes=False)
        s.eval()
    else:
        recalibrate_batchnorm(s, row_loader(rows, 64, shuffle=True, seed=seed, group_by_length=grouped), batches)
    return round(100 * dev_metrics(lambda b: s(**b, return_probes=False).logits, store)["accuracy"], 2)
for seed in (123, 7):
    print(seed, "cumulative plain", acc(False, seed), "cumulative grouped", acc(True, seed),
          "EMA plain", acc(False, seed, False), "EMA grouped", acc(True, seed, False), flush=True)
