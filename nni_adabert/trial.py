"""AdaBERT as NNI trials: one search, or one retraining, per trial.

``trials/search_trial.py`` and ``trials/retrain_trial.py`` are thin wrappers around
:func:`main`. A trial takes its settings from the command line (the experiment's
``trialCommand``: fixed settings such as sizes and limits) and then from
``nni.get_next_parameter()`` (what the tuner varies: ``beta``, ``gamma``, ``lr``,
``task``, ``arch``, ...); a tuner value wins. Outside NNI the same script runs
standalone with its defaults.

What a trial does:

- finds the teacher's knowledge store for its task: a teacher run directory
  (``--teacher``, default ``runs/nni/teacher-<task>``); when that directory has
  no ``probes.json`` yet, the trial builds it first with the same library calls
  as ``nni-adabert teacher`` (:func:`build_teacher_run`; a file lock keeps
  concurrent trials from building it twice);
- searches (or retrains) with ``report_to_nni=True``: the dev metrics go to NNI
  after every epoch (``nni.report_intermediate_result``);
- exports ``architecture.json``, ``student.safetensors`` and ``cell.png`` into the
  trial's output directory (``$NNI_OUTPUT_DIR``, shown by the web UI);
- reports the final result: ``{"default": <task's main dev metric>, "accuracy": ...,
  ("f1": ...,) "params": ..., "flops": ..., "speedup": ...}`` (metrics in [0, 1]).

Training runs on the GPU when one is visible (Lightning ``accelerator="auto"``),
else on the CPU. A mistake a user can fix (bad architecture JSON, missing data,
unknown parameter) ends the trial with one line on stderr and exit code 2, so
NNI marks it FAILED and the experiment goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import nni
import torch
from filelock import FileLock

from .atomic import write_json
from .config import RetrainConfig, SearchConfig, add_options, from_options
from .data.custom import TaskConfig, add_task_options, task_from_options
from .errors import RunStopped, UserError, as_user_error, stop_on_signals, stopped_message
from .logs import configure_logging
from .nas.nni_trial import report_to_nni_trial
from .teacher.augment import AugmentConfig
from .teacher.finetune import TeacherConfig, load_finetuned_teacher
from .teacher.knowledge import KnowledgeStore
from .teacher.run import build_teacher_run, open_teacher_run
from .workflows.export import ARCH_FILE, CELL_FILE, WEIGHTS_FILE, load_student, read_architecture
from .workflows.retrain import ARCH_GROUP_HELP, ARCH_HELP, arch_to_retrain, run_retrain
from .workflows.speed import dev_examples, measure_speedup
from .workflows.search import run_search

log = logging.getLogger("nni_adabert.trial")

SEARCH, RETRAIN = "search", "retrain"


# --------------------------------------------------------------------------- settings


CONFIGS = {SEARCH: SearchConfig, RETRAIN: RetrainConfig}


def build_parser(kind: str) -> argparse.ArgumentParser:
    """Every setting of a ``kind`` trial; each can also come from the tuner (same name,
    ``-`` or ``_``). The training settings are generated from the same config fields as the
    CLI's (:func:`config.add_options`)."""
    p = argparse.ArgumentParser(prog=f"{kind}_trial.py", description=f"AdaBERT {kind} as an NNI trial. "
                                "Settings from the tuner (nni.get_next_parameter()) override these.")
    add_task_options(p.add_argument_group("data (a GLUE task, or your own: see docs/data.md)"))
    p.add_argument("--teacher", default=None, help="teacher run directory (default runs/nni/teacher-<task>); "
                   "built there first when it has no probes.json")
    p.add_argument("--cache-dir", default=None, help="teacher-knowledge stores (default $NNI_ADABERT_CACHE "
                   "or ~/.cache/nni-adabert)")
    p.add_argument("--output-dir", default=None, help="where the student goes (default $NNI_OUTPUT_DIR, "
                   "else runs/nni/standalone/<kind>-<time>)")
    g = p.add_argument_group("teacher (only when the trial has to build the teacher run)")
    g.add_argument("--teacher-model", default=None, help="BERT-family checkpoint (default: bundled MiniLM)")
    g.add_argument("--teacher-epochs", type=int, default=1)
    g.add_argument("--teacher-batch-size", type=int, default=32)
    g.add_argument("--teacher-lr", type=float, default=5e-5)
    g.add_argument("--teacher-train-limit", type=int, default=None, help="first N train rows")
    g.add_argument("--teacher-dev-limit", type=int, default=None, help="first N dev rows")
    g.add_argument("--aug-copies", type=int, default=0, help="augmented copies per train example (a quick teacher: "
                   "none; `nni-adabert teacher` builds the full one)")
    add_options(p.add_argument_group(f"{kind} settings"), CONFIGS[kind])
    if kind == SEARCH:
        p.add_argument("--export-to", default=None, help="also copy the exported student to this directory, "
                       "a stable path for retrain trials; {name} fields are settings, e.g. "
                       "'runs/nni/searched/{task}-beta{beta:g}'")
    else:
        g = p.add_argument_group("architecture", ARCH_GROUP_HELP)
        g.add_argument("--arch", default=None, help=ARCH_HELP)
        add_options(g, SearchConfig, only=("embed_dim", "k_max", "space"))
    g = p.add_argument_group("measurement")
    g.add_argument("--speedup-rows", type=int, default=256,
                   help="dev rows to time teacher vs student on (batch 128, CPU); 0 = do not measure")
    g.add_argument("--speedup-repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--progress", action="store_true", help="progress bars in the trial log")
    return p


def trial_settings(kind: str, argv: list[str] | None, tuned: dict | None) -> argparse.Namespace:
    """Command-line settings, then the tuner's values on top (checked by the same parser)."""
    parser = build_parser(kind)
    args = parser.parse_args(argv)  # a bad command line: argparse's message, exit code 2
    known = {a.dest: a for a in parser._actions if a.dest != "help"}
    for key, value in (tuned or {}).items():
        dest = key.replace("-", "_")
        if dest not in known:
            raise UserError(f"unknown trial parameter {key!r} from the tuner; known: {', '.join(sorted(known))}")
        action = known[dest]
        on_off = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
        if isinstance(action, on_off) and not isinstance(value, bool):
            if str(value).lower() not in ("true", "false", "1", "0"):
                raise UserError(f"trial parameter {key!r}: {value!r} is not true or false")
            value = str(value).lower() in ("true", "1")
        elif value is not None and action.type is not None:
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise UserError(f"trial parameter {key!r}: {value!r} is not a valid {action.type.__name__}") from None
        setattr(args, dest, value)
    if not args.data:  # "" (e.g. an unset $GLUE_DIR in trialCommand) means the bundled sample
        args.data = None
    return args


def output_dir(args: argparse.Namespace, kind: str) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    if os.environ.get("NNI_OUTPUT_DIR"):
        return Path(os.environ["NNI_OUTPUT_DIR"])
    return Path("runs") / "nni" / "standalone" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- teacher


def teacher_store(args: argparse.Namespace) -> KnowledgeStore:
    """The knowledge store of the trial's teacher run, built first when missing."""
    task = task_from_options(args)
    name = task.task_name if isinstance(task, TaskConfig) else task
    run = Path(args.teacher or Path("runs") / "nni" / f"teacher-{name}")
    run.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run) + ".lock"):
        if not (run / "probes.json").is_file():
            print(f"teacher run {run} has no probes.json: building it ({name}, "
                  f"{args.teacher_epochs} epoch(s), train limit {args.teacher_train_limit})", flush=True)
            build_teacher_run(task, run, data=args.data, model=args.teacher_model,
                              teacher_config=TeacherConfig(epochs=args.teacher_epochs, lr=args.teacher_lr,
                                                           batch_size=args.teacher_batch_size, seed=42),
                              augment=AugmentConfig(copies=args.aug_copies) if args.aug_copies != 0 else None,
                              cache_dir=args.cache_dir, train_limit=args.teacher_train_limit,
                              dev_limit=args.teacher_dev_limit, progress=args.progress)
        store = open_teacher_run(run)
    if store.meta["task"] != name:
        raise UserError(f"teacher run {run} is for {store.meta['task']}, not {name}; "
                        f"pass another --teacher (or parameter 'teacher')")
    print(f"teacher knowledge for {name}: {store.path} ({len(store.data['train']):,} train / "
          f"{len(store.data['dev']):,} dev rows)", flush=True)
    return store


# --------------------------------------------------------------------------- results


def measure_store_speedup(store, student, rows: int, repeats: int) -> float | None:
    """Teacher time / student time on the first ``rows`` dev rows (batch 128, CPU, one process)."""
    if rows <= 0:
        return None
    teacher = load_finetuned_teacher(store.meta["teacher_dir"], store.spec)
    return float(measure_speedup(teacher, student, dev_examples(store, rows), batch_size=128,
                                 repeats=repeats)["speedup"])


def final_result(doc: dict, main_metric: str, speedup: float | None) -> dict:
    """NNI's final metric: ``default`` is the task's main dev metric; numbers only."""
    result = {"default": doc["dev_metrics"][main_metric], **doc["dev_metrics"], "params": doc["params"],
              "params_without_embedding": doc["params_without_embedding"], "flops": doc["flops"],
              "depth": doc["depth"]}
    if speedup is not None:
        result["speedup"] = speedup
    return result


def finish(store, student, doc: dict, out: Path, args) -> dict:
    speedup = measure_store_speedup(store, student, args.speedup_rows, args.speedup_repeats)
    result = final_result(doc, store.spec.main_metric, speedup)
    # not nni.report_final_result: after a one-shot search NNI's current parameters are the NAS engine's
    report_to_nni_trial("final", result)
    write_json(out / "final_result.json", result)
    print(f"final result: {json.dumps(result)}\nexported to {out}", flush=True)
    return result


# --------------------------------------------------------------------------- trials


def search_trial(args: argparse.Namespace) -> dict:
    store = teacher_store(args)
    out = output_dir(args, SEARCH)
    config = from_options(SearchConfig, args)
    print(f"search: {config}", flush=True)
    doc = run_search(store, out, config, progress=args.progress, report_to_nni=True)
    student = load_student(read_architecture(out / ARCH_FILE))
    if args.export_to:
        try:
            dest = Path(str(args.export_to).format(**{**vars(args), "task": store.meta["task"]}))
        except (KeyError, ValueError, IndexError) as exc:
            raise UserError(f"--export-to {args.export_to!r}: {exc!r} is not a setting to fill in") from None
        dest.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_FILE, CELL_FILE, ARCH_FILE):  # the JSON last: complete JSON = complete files
            shutil.copy2(out / name, dest / name)
        print(f"copied the student to {dest}", flush=True)
    return finish(store, student, doc, out, args)


def retrain_trial(args: argparse.Namespace) -> dict:
    if not args.arch:
        raise UserError("no architecture to retrain: pass --arch FILE or 'random:<seed>' (or parameter 'arch')")
    store = teacher_store(args)
    chosen = arch_to_retrain(args.arch, store, args.embed_dim, args.k_max, args.space)
    print(f"retrain on {store.meta['task']}: {chosen.source['from']} -> {chosen.arch}", flush=True)
    out = output_dir(args, RETRAIN)
    doc = run_retrain(chosen, store, out, from_options(RetrainConfig, args), progress=args.progress,
                      report_to_nni=True)
    return finish(store, load_student(read_architecture(out / ARCH_FILE)), doc, out, args)


def main(kind: str, argv: list[str] | None = None) -> int:
    """Run one ``kind`` trial ("search" or "retrain"); returns the exit code."""
    configure_logging()
    try:
        with stop_on_signals():
            return _run(kind, argv)
    except RunStopped as stopped:
        print(stopped_message(f"{kind} trial", stopped), file=sys.stderr, flush=True)
        return 128 + stopped.signum


def _run(kind: str, argv: list[str] | None) -> int:
    try:
        tuned = nni.get_next_parameter()
        args = trial_settings(kind, sys.argv[1:] if argv is None else argv, tuned)
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        print(f"AdaBERT {kind} trial {nni.get_trial_id()} on {device}; tuner parameters: {json.dumps(tuned)}",
              flush=True)
        (search_trial if kind == SEARCH else retrain_trial)(args)
    except (UserError, OSError) as exc:
        error = as_user_error(exc)
        if error is None:
            raise
        message = f"nni-adabert {kind} trial: error: {error}"
        print(message, file=sys.stderr, flush=True)  # trial.stderr
        if os.environ.get("NNI_PLATFORM"):
            print(message, flush=True)  # inside NNI, stdout is the trial log (trial.log)
        return error.exit_code
    return 0
