"""Weight averaging after the fact: mean of checkpoints' weights, BatchNorm re-estimated, dev accuracy.
(bench/results/retrain-recipes/SST-2-100x-amd): the mean of a retraining's last N saved weights
(epoch ends, checkpoints within an epoch, the exported student), BatchNorm re-estimated as --precise-bn-batches 200
does, dev accuracy. Checkpoints copied from retrain/checkpoints/last.ckpt as they were written.

    PYTHONPATH=<checkout> python weight_averaging.py TEACHER_RUN RUN CHECKPOINTS"""
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
run = sys.argv[2]
student = load_student(load_exported(run, store))
final = {k: v.clone() for k, v in student.state_dict().items()}

def score():
    student.eval()
    return round(100 * dev_metrics(lambda i: student(**i, return_probes=False).logits, store)["accuracy"], 2)

def reest():
    module = AdaBertDistillModule(store.meta["num_labels"], config)
    module.set_model(student)
    loader = row_loader(store.rows("train"), config.batch_size, shuffle=True, seed=config.seed)
    recompute_batchnorm_statistics(module, (b for _, b in zip(range(200), loader)), config.seed)

points = []
for path in sorted(Path(sys.argv[3]).glob("*.ckpt")):
    saved = torch.load(path, map_location="cpu", weights_only=True)
    mid = [s["batches"] for s in saved["callbacks"].values() if isinstance(s, dict) and "batches" in s]
    label = f"e{saved['epoch'] + 1}" + (f"@{mid[0]}" if mid else "end")
    points.append((label, {k.removeprefix("_model."): v for k, v in saved["state_dict"].items()
                           if k.startswith("_model.")}))
points.append(("final", final))
print([p[0] for p in points], flush=True)

def average(states):
    out = {}
    for k, v in states[0].items():
        out[k] = sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
    return out

for n in range(1, min(5, len(points)) + 1):
    chosen = points[-n:]
    student.load_state_dict(average([s for _, s in chosen]))
    before = score(); reest(); after = score()
    print(f"mean of last {n} {[c[0] for c in chosen]}: as averaged {before}, re-estimated {after}", flush=True)
