#!/usr/bin/env bash
# Teacher fine-tuning + per-layer probes on a full GLUE task (issue 2's evidence).
#   bash bench/teacher_probes.sh [TASK] [EPOCHS] [AUG_COPIES]
# Writes bench/results/teacher-<TASK>.{json,md,png} and keeps the run (teacher,
# knowledge store) under runs/bench/ for the search benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-SST-2}; EPOCHS=${2:-1}; COPIES=${3:-1}
DATA=${GLUE_DIR:-../shared/data/glue}
RUN=runs/bench/teacher-$TASK
CMD=(.venv/bin/nni-adabert teacher --task "$TASK" --data "$DATA" --epochs "$EPOCHS" --aug-copies "$COPIES"
     --output-dir "$RUN" --cache-dir runs/bench/cache)
"${CMD[@]}" --no-progress
mkdir -p bench/results
.venv/bin/python - "$RUN" "$TASK" "${CMD[*]}" <<'PY'
import json, platform, shutil, sys, os
run, task, cmd = sys.argv[1:]
result = json.load(open(f"{run}/probes.json"))
result["command"] = cmd
result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
json.dump(result, open(f"bench/results/teacher-{task}.json", "w"), indent=2)
md = open(f"{run}/probes.md").read()
head = ", ".join(f"{k} {100*v:.2f}" for k, v in result["teacher"]["dev_metrics"].items())
open(f"bench/results/teacher-{task}.md", "w").write(
    f"# {task}: teacher and per-layer probes\n\nCommand: `{cmd}`\n\nMachine: {result['machine']}\n\n"
    f"Teacher ({result['teacher']['base_model']}) dev: {head}\n\n{md}")
shutil.copy(f"{run}/probes.png", f"bench/results/teacher-{task}.png")
PY
echo "wrote bench/results/teacher-$TASK.{json,md,png}"
