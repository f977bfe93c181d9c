#!/usr/bin/env bash
# Teacher fine-tuning + per-layer probes on a full GLUE task (issue 2's evidence).
#   bash bench/teacher_probes.sh [TASK] [EPOCHS] [AUG_COPIES] [NAME]
# Keeps the run (teacher, knowledge store) in runs/bench/<NAME> for the search benchmarks and
# writes result.json, result.md and probes.png into bench/results/teacher/<RUN>/, RUN being NAME
# without its teacher- prefix (as bench/common.py's results_dir): bench/results/teacher/<TASK>/ by
# default. With AUG_COPIES other than 1 the run is named teacher-<TASK>-aug<AUG_COPIES> (results:
# bench/results/teacher/<TASK>-aug<AUG_COPIES>/), and the fine-tuned teacher of
# runs/bench/teacher-<TASK> is reused when it is there (only the knowledge store is new).
# A given NAME names the run and its results instead, and always fine-tunes its own teacher
# (e.g. a longer one: bash bench/teacher_probes.sh MRPC 5 2 teacher-MRPC-5ep -> bench/results/teacher/MRPC-5ep/).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-SST-2}; EPOCHS=${2:-1}; COPIES=${3:-1}
DATA=${GLUE_DIR:-../shared/data/glue}
NAME=${4:-teacher-$TASK$([ "$COPIES" = 1 ] || echo "-aug$COPIES")}
RUN=runs/bench/$NAME
RESULT_NAME=${NAME#teacher-}; [ "$NAME" = teacher ] && RESULT_NAME=default
RESULTS=bench/results/teacher/$RESULT_NAME
# Only the default name of an augmented store reuses teacher-<TASK>'s fine-tuned teacher.
if [ "$NAME" = "teacher-$TASK-aug$COPIES" ] && [ -d "runs/bench/teacher-$TASK/teacher" ] && [ ! -e "$RUN" ]; then
  mkdir -p "$RUN" && cp -r "runs/bench/teacher-$TASK/teacher" "runs/bench/teacher-$TASK/teacher_train" "$RUN/"
fi
CMD=(.venv/bin/nni-adabert teacher --task "$TASK" --data "$DATA" --epochs "$EPOCHS" --aug-copies "$COPIES"
     --output-dir "$RUN" --cache-dir runs/bench/cache)
"${CMD[@]}" --no-progress
mkdir -p "$RESULTS"
.venv/bin/python - "$RUN" "$RESULTS" "${CMD[*]}" <<'PY'
import json, platform, shutil, sys, os
run, results, cmd = sys.argv[1:]
result = json.load(open(f"{run}/probes.json"))
result["command"] = cmd
result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
task = result["task"]
json.dump(result, open(f"{results}/result.json", "w"), indent=2)
md = open(f"{run}/probes.md").read()
meta = json.load(open(os.path.join(result["knowledge_store"], "meta.json")))
head = ", ".join(f"{k} {100*v:.2f}" for k, v in result["teacher"]["dev_metrics"].items())
open(f"{results}/result.md", "w").write(
    f"# {task}: teacher and per-layer probes\n\nCommand: `{cmd}`\n\nMachine: {result['machine']}\n\n"
    f"Teacher ({result['teacher']['base_model']}) dev: {head}\n\n"
    f"Knowledge store: {meta['num_train_original']:,} original + {meta['num_train_augmented']:,} augmented "
    f"train rows, {meta['num_dev']:,} dev rows\n\n{md}")
shutil.copy(f"{run}/probes.png", f"{results}/probes.png")
PY
echo "wrote $RESULTS/{result.json,result.md,probes.png}"
