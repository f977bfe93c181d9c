"""The ``nni-adabert`` command line.

Each subcommand is a thin layer over the Python API: it parses arguments, calls
one library function, and prints what a user wants to see. Mistakes a user can
fix (``UserError``) print one line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from . import __version__
from .atomic import check_writable, write_json, write_text
from .config import RetrainConfig, SearchConfig, add_options, from_options
from .data.custom import add_task_options, task_from_options
from .data.tasks import TASKS
from .errors import RunStopped, UserError, as_user_error, stop_on_signals, stopped_message
from .logs import configure_logging
from .nas.budget import speed_budget
from .tables import format_table
from .teacher.augment import AUGMENTED_ROWS, MAX_COPIES, MIN_COPIES, AugmentConfig, default_copies
from .teacher.finetune import TeacherConfig, parse_label_map
from .teacher.knowledge import DEFAULT_CACHE_DIR
from .teacher.run import build_teacher_run, open_teacher_run
from .training import PRECISIONS, checkpoint_minutes, is_main_process
from .workflows.deploy import deploy
from .workflows.evaluate import compare_with_teacher
from .workflows.export import load_exported
from .workflows.predict import Predictor, predict_inputs, read_inputs
from .workflows.retrain import ARCH_GROUP_HELP, ARCH_HELP, arch_to_retrain, run_retrain
from .workflows.search import run_search
from .workflows.speed import REFERENCES, latency_table
from .workflows.student import searched_student_config

log = logging.getLogger("nni_adabert")


# --------------------------------------------------------------------------- shared arguments


def add_data_args(p: argparse.ArgumentParser) -> None:
    add_task_options(p.add_argument_group("data (a GLUE task, or your own: see docs/data.md)"))
    p.add_argument("--cache-dir", default=None, help="where teacher-knowledge stores live "
                   "(default $NNI_ADABERT_CACHE or ~/.cache/nni-adabert)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option and exits with code 2 otherwise)."""
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


positive_int.__name__ = "integer >= 1"  # how argparse names the type in its message


def add_augment_args(p: argparse.ArgumentParser) -> None:
    defaults = AugmentConfig()
    p.add_argument("--aug-copies", type=int, default=None, help="augmented copies per train example (TinyBERT "
                   f"word replacement; 0 = none) (default: enough for about {AUGMENTED_ROWS:,} augmented rows, "
                   f"{MIN_COPIES} to {MAX_COPIES} per example: MRPC {default_copies(3668)}, SST-2 "
                   f"{default_copies(67349)})")
    p.add_argument("--aug-prob", type=float, default=None, help="probability to replace each word "
                   f"(default {defaults.replace_prob:g})")
    p.add_argument("--aug-seed", type=int, default=None, help=f"augmentation seed (default {defaults.seed})")
    p.add_argument("--inference-precision", default="auto", choices=PRECISIONS,
                   help="precision of the teacher's passes that build the knowledge store: auto is bf16 where the "
                   "CPU (AVX512-BF16, AMX) or GPU computes it natively, else fp32 (default auto)")


def augment_config(args) -> AugmentConfig | None:
    overrides = {"copies": args.aug_copies, "replace_prob": args.aug_prob, "seed": args.aug_seed}
    config = AugmentConfig(**{k: v for k, v in overrides.items() if v is not None})
    return None if config.copies == 0 else config


def cache_dir(args) -> Path:
    return Path(args.cache_dir) if args.cache_dir else DEFAULT_CACHE_DIR


# --------------------------------------------------------------------------- teacher


def cmd_teacher(args) -> None:
    """Fine-tune the teacher, train its layer probes, cache its knowledge."""
    if args.train_limit is not None and args.train_limit < 1:
        raise UserError(f"teacher setting train_limit must be an integer >= 1, got {args.train_limit}")
    config = from_options(TeacherConfig, args)
    if args.no_finetune:
        if config.epochs not in (None, 0):
            raise UserError(f"--no-finetune takes --model as it is: drop --epochs {config.epochs}")
        config = dataclasses.replace(config, epochs=0)
    build_teacher_run(task_from_options(args), args.output_dir, args.data, args.model, config,
                      augment_config(args), cache_dir(args),
                      train_limit=args.train_limit, progress=not args.no_progress, echo=print,
                      label_map=parse_label_map(args.label_map), precision=args.inference_precision)


# --------------------------------------------------------------------------- search / retrain / evaluate


def add_training_args(p: argparse.ArgumentParser, config_cls: type) -> None:
    """The options of ``search`` (``config_cls`` = :class:`SearchConfig`) or ``retrain``
    (:class:`RetrainConfig`): the run's places, then one option per setting."""
    p.add_argument("--teacher", required=True, help="output directory of `nni-adabert teacher` (its knowledge store)")
    p.add_argument("--output-dir", required=True, help="where architecture.json, student.safetensors, cell.png go")
    add_options(p.add_argument_group(f"{config_cls.kind} settings"), config_cls)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def print_student(doc: dict, out_dir: Path) -> None:
    if not is_main_process():  # a DDP worker: the first process reports
        return
    metrics = ", ".join(f"{k} {100 * v:.2f}" for k, v in doc["dev_metrics"].items())
    print(f"student ({doc['task']}): K = {doc['depth']} cells, {doc['params']:,} params "
          f"({doc['params_without_embedding']:,} without the embedding), "
          f"{doc['flops']:,} FLOPs at {doc['flops_seq_len']} tokens")
    print(f"  dev: {metrics}")
    budget = (doc.get("search") or {}).get("max_params")
    if budget:
        counted = "params_without_embedding" if doc["search"].get("budget_excludes_embedding") else "params"
        print(f"  budget: {budget:,} params{' without the embedding' if counted != 'params' else ''}; "
              f"the student has {doc[counted]:,}")
    predicted = doc.get("predicted_speedup")
    if predicted:
        print(f"  speed budget: at least {doc['search']['min_speedup']:g}x {predicted['over']}; the student is "
              f"predicted {predicted['speedup']:.1f}x (this machine's latency table, "
              f"{predicted['latency_table']['threads']} thread(s), batch {predicted['latency_table']['batch_size']})"
              + (f", timed {predicted['measured']:.1f}x" if "measured" in predicted else ""))
    arch = ", ".join(f"{k}={v}" for k, v in doc["architecture"].items())
    print(f"  cell: {arch}")
    # "in", not "wrote": a run found finished returns its files untouched
    print(f"  in {out_dir}: architecture.json, student.safetensors, cell.png")


def cmd_search(args) -> None:
    """Search a student on the teacher's knowledge and export it."""
    store = open_teacher_run(args.teacher)
    doc = run_search(store, args.output_dir, from_options(SearchConfig, args), progress=not args.no_progress)
    print_student(doc, Path(args.output_dir))


def cmd_latency(args) -> None:
    """This machine's latency table of the space (measured once, then cached): what --min-speedup reads."""
    store = open_teacher_run(args.teacher)
    config = from_options(SearchConfig, args)
    space_config = searched_student_config(store, config)
    table = latency_table(store, space_config, config.speedup_over, config.latency_batch_size,
                          config.latency_threads, echo=print)
    scale = 1000 / table.reference_seconds  # per mille of the reference's time: readable whatever the machine
    rows = [[name, f"{seconds * scale:.2f}"] for name, seconds in table.op_seconds.items()]
    rows += [["(each cell besides its edges)", f"{table.cell_seconds * scale:.2f}"],
             ["(embedding, pooling, classifier)", f"{table.once_seconds * scale:.2f}"]]
    print(format_table(["op (one edge)", f"time, per mille of {REFERENCES[config.speedup_over]}"], rows))
    fastest = table.reference_seconds / speed_budget(table, 1.0).smallest(space_config)
    print(f"{REFERENCES[config.speedup_over]}: {table.reference_seconds:.3f} s per pass over "
          f"{len(table.setting['lengths'])} dev batches of {table.setting['batch_size']} "
          f"({table.setting['threads']} thread(s)); the fastest student of this space is predicted "
          f"{fastest:.0f}x faster")


def cmd_retrain(args) -> None:
    """Retrain an exported architecture on a (possibly other) task, from fresh weights."""
    store = open_teacher_run(args.teacher)
    chosen = arch_to_retrain(args.arch, store, args.embed_dim, args.k_max, args.space)
    doc = run_retrain(chosen, store, args.output_dir, from_options(RetrainConfig, args), progress=not args.no_progress)
    print_student(doc, Path(args.output_dir))


def cmd_evaluate(args) -> None:
    """Teacher vs student: dev metrics, params, FLOPs and (with --speed) measured speedup."""
    store = open_teacher_run(args.teacher)
    result = compare_with_teacher(store, args.arch, args.weights, speed=args.speed, deployed=args.deployed or False)
    fmt = lambda m: ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items())  # noqa: E731
    rows = []
    for name, r in (("teacher", result["teacher"]), (f"student (K={result['student']['depth']})", result["student"])):
        rows.append([name, fmt(r["dev_metrics"]), f"{r['params']:,}", f"{r['flops']:,}",
                     f"{r['speedup']:.1f}x" if "speedup" in r else "-"])
    for key, name in (("deployed", "student, deployed (ONNX, BN folded)"),
                      ("deployed_int8", "student, deployed int8 (dynamic quantization)")):
        if key in result:
            speedup = result[key].get("speedup_over", {}).get("teacher")
            rows.append([name, fmt(result[key]["dev_metrics"]), "-", "-", f"{speedup:.1f}x" if speedup else "-"])
    table = format_table(["model", "dev", "params", "FLOPs/example (128 tokens)", "speedup (batch 128)"], rows)
    print(table)
    for key in ("deployed", "deployed_int8"):
        if "speedup_over" in result.get(key, {}):
            print(f"{result[key]['path']}: {result[key]['speedup_over']['student']:.2f}x the eager student's speed "
                  f"(batch 128, intra-op threads {result['speed']['threads']}, median of {result['speed']['repeats']})")
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, table + "\n")


def cmd_deploy(args) -> None:
    """Fold BatchNorm, export to ONNX, check the export against the eager student on dev rows."""
    store = open_teacher_run(args.teacher) if args.teacher else None
    report = deploy(load_exported(args.arch, store), store, args.output, int8=args.int8)
    print(f"folded {report['batchnorms_folded']} BatchNorm layers into their convolutions; on "
          f"{report['checked_examples']} dev examples the largest |logit difference| to the eager student is "
          f"{report['onnx_max_abs_diff']:.1e} (ONNX Runtime) and {report['folded_max_abs_diff']:.1e} (folded, eager)")
    print(f"  wrote {report['output']} ({report['bytes'] / 1e6:.1f} MB)")
    if args.int8:
        print(f"  wrote {report['int8_output']} ({report['int8_bytes'] / 1e6:.1f} MB, dynamic int8): the same class "
              f"as the eager student on {100 * report['int8_label_agreement']:.1f}% of those examples, largest "
              f"|logit difference| {report['int8_max_abs_diff']:.1e}")


def cmd_predict(args) -> None:
    """A student's labels and class probabilities for new texts, as JSON Lines."""
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(args.student, onnx=args.onnx or False, threads=args.threads)
    # A Hugging Face classifier reads one text or pairs: pairs when the second texts are named.
    is_pair = predictor.is_pair if predictor.is_pair is not None else bool(args.text_pair or args.text_pair_column)
    texts_a, texts_b, where = read_inputs(args.text, args.text_pair, args.input, args.text_column,
                                          args.text_pair_column, is_pair)
    # A progress bar for a file only: texts on the command line or piped in are answered at once.
    from_file = bool(args.input) and args.input != "-"
    predictions, report = predict_inputs(predictor, texts_a, texts_b, args.batch_size,
                                         progress=not args.no_progress and from_file)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    if args.output:
        write_text(args.output, lines)
    else:
        sys.stdout.write(lines)
    print(f"predicted {report['texts']:,} text(s) from {where} in {report['seconds']:.2f} s "
          f"({report['texts_per_second']:,.0f}/s, {report['backend']}, {torch.get_num_threads()} thread(s))"
          + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)


# --------------------------------------------------------------------------- demo


# The pipeline a user runs, at the bundled sample's scale: a budget the size of the paper's SST-2
# student, then a retraining from fresh weights; on 16,000 rows 5 epochs (81.08) beat 3 (80.50)
# and 2 of fine-tuning the searched weights (79.47), and dropout 0.2 beat 0.1 by 0.50 points on
# average (three retrainings; on full SST-2 more dropout did not help): docs/results.md, "The demo".
# Its retraining keeps batches grouped by length (retrain's default is a plain shuffle): the demo was
# measured that way, within its 20 minutes.
DEMO_BUDGET = "6400000"
DEMO_STEPS = [
    ["teacher", "--epochs", "1", "--aug-copies", "1", "--output-dir", "{out}"],
    ["search", "--teacher", "{out}", "--max-params", DEMO_BUDGET, "--output-dir", "{out}/searched"],
    ["retrain", "--teacher", "{out}", "--arch", "{out}/searched", "--epochs", "5", "--dropout", "0.2",
     "--group-by-length", "--output-dir", "{out}/student"],
    ["evaluate", "--teacher", "{out}", "--arch", "{out}/student", "--speed",
     "--json", "{out}/summary.json", "--markdown", "{out}/summary.md"],
]


def demo_steps(out: Path, no_progress: bool = False, cache_dir: str | None = None) -> list[list[str]]:
    """The command lines of ``nni-adabert demo``'s steps."""
    steps = []
    for step in DEMO_STEPS:
        argv = [a.format(out=out) for a in step]
        if step[0] != "evaluate":
            argv += ["--no-progress"] if no_progress else []
        if step[0] == "teacher":  # the knowledge cache: later steps find it through the teacher run
            argv += ["--cache-dir", cache_dir] if cache_dir else []
        steps.append(argv)
    return steps


def cmd_demo(args) -> None:
    """The whole journey on the bundled SST-2 sample: teacher -> probes -> cache ->
    search -> export -> retrain -> evaluate, then teacher vs student side by side."""
    out = Path(args.output_dir)
    parser = build_parser()
    steps = demo_steps(out, args.no_progress, args.cache_dir)
    for i, argv in enumerate(steps, 1):
        print(f"\n=== step {i}/{len(steps)}: nni-adabert {' '.join(argv)}\n", flush=True)
        sub = parser.parse_args(argv)
        sub.func(sub)
    print(f"\narchitecture: {out / 'student' / 'architecture.json'}\nweights:      "
          f"{out / 'student' / 'student.safetensors'}\ncell picture: {out / 'student' / 'cell.png'}\n"
          f"summary:      {out / 'summary.md'}, {out / 'summary.json'}")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nni-adabert", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"nni-adabert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list the GLUE tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("teacher", help="fine-tune a teacher, train its layer probes, cache its knowledge")
    add_data_args(p)
    add_augment_args(p)
    p.add_argument("--model", default=None,
                   help="BERT-family checkpoint: hub name or local directory (default: bundled all-MiniLM-L6-v2); "
                        "with --no-finetune one already fine-tuned on the task")
    p.add_argument("--no-finetune", action="store_true", help="take --model as it is, already fine-tuned on the "
                   "task, its labels matched to the task's (the same as --epochs 0)")
    p.add_argument("--label-map", default=None, help="with --no-finetune: the --model's label names -> the task's, "
                   "e.g. NEGATIVE=0,POSITIVE=1 (default: matched by name)")
    p.add_argument("--output-dir", required=True, help="run directory (teacher/, probes.*)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N train rows (default: all)")
    add_options(p.add_argument_group("teacher settings"), TeacherConfig)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled SST-2 sample (about 17 minutes on 2 CPU cores)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("search", help="search a student (AdaBERT) and export it")
    add_training_args(p, SearchConfig)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("latency", help="measure (once) and show this machine's per-op latency table, "
                                        "which search --min-speedup reads")
    p.add_argument("--teacher", required=True, help="output directory of `nni-adabert teacher` (its dev rows "
                                                   "give the lengths)")
    add_options(p.add_argument_group("latency settings"), SearchConfig,
                only=("speedup_over", "latency_threads", "latency_batch_size", "embed_dim", "k_max", "space"))
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("retrain", help="retrain an exported architecture from fresh weights (any task)")
    add_training_args(p, RetrainConfig)
    g = p.add_argument_group("architecture", ARCH_GROUP_HELP)
    g.add_argument("--arch", required=True, help=ARCH_HELP)
    add_options(g, SearchConfig, only=("embed_dim", "k_max", "space"))
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("evaluate", help="dev metrics, params and FLOPs of an exported student")
    p.add_argument("--arch", required=True, help="architecture.json (or its directory)")
    p.add_argument("--weights", default=None, help="weights (default: the file named in the JSON)")
    p.add_argument("--teacher", required=True, help="output directory of `nni-adabert teacher` for the task")
    p.add_argument("--speed", action="store_true",
                   help="also time teacher and student on the dev set at batch 128 (median of 3)")
    p.add_argument("--deployed", nargs="?", const=True, default=None, metavar="ONNX",
                   help="also evaluate (and with --speed time) the deployed student written by "
                        "`nni-adabert deploy` (default file: student.onnx beside the architecture)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="a trained student's labels and probabilities for new texts (JSON Lines)")
    p.add_argument("--student", required=True, help="the student's directory (search or retrain --output-dir); "
                   "a Hugging Face classifier's directory (e.g. a teacher run's teacher/) runs that, to compare")
    p.add_argument("--text", action="append", default=None, help="a text to label (repeat for several)")
    p.add_argument("--text-pair", action="append", default=None, help="its second text (pair students)")
    p.add_argument("--input", default=None, help="texts from a file: .txt (one per line; a tab between the texts "
                   "of a pair), .csv, .tsv, .jsonl, .json or .parquet (see --text-column), or - for stdin "
                   "(default: stdin when no --text)")
    p.add_argument("--text-column", default="text", help="the input file's text column (default text)")
    p.add_argument("--text-pair-column", default=None, help="the input file's second-text column (pair students)")
    p.add_argument("--output", default=None, help="write the JSON Lines here (default: stdout)")
    p.add_argument("--onnx", nargs="?", const=True, default=None, metavar="ONNX",
                   help="run the deployed graph (`nni-adabert deploy`; default file: student.onnx in --student)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="texts per batch (default 128)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("deploy", help="fold BatchNorm into the convolutions and export the student to ONNX")
    p.add_argument("--arch", required=True, help="architecture.json (or its directory)")
    p.add_argument("--output", default=None, help="ONNX file to write (default: student.onnx beside the architecture)")
    p.add_argument("--teacher", default=None, help="teacher run whose dev rows check the export "
                   "(default: the knowledge store recorded in the architecture)")
    p.add_argument("--int8", action="store_true", help="also write student.int8.onnx, ONNX Runtime's dynamic "
                   "int8 quantization of the graph (about 4x smaller; `evaluate --deployed` reports both)")
    p.set_defaults(func=cmd_deploy)
    return parser


def cmd_tasks(args) -> None:
    rows = [[t.name, "pair" if t.is_pair else "single", "/".join(t.labels), ", ".join(t.metrics)]
            for t in TASKS.values()]
    print(format_table(["task", "input", "labels", "metrics"], rows))


def check_outputs(args) -> None:
    """Refuse, before any work and creating nothing, output places we could not write."""
    for name in ("output_dir", "cache_dir"):
        if getattr(args, name, None):
            check_writable(getattr(args, name))
    for name in ("json", "markdown", "output"):
        if getattr(args, name, None):
            check_writable(Path(getattr(args, name)).parent)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, progress=not getattr(args, "no_progress", False))
    try:
        with stop_on_signals():
            check_outputs(args)
            checkpoint_minutes()  # a bad $NNI_ADABERT_CHECKPOINT_MINUTES: refused before anything is written
            args.func(args)
    except RunStopped as stopped:
        print(stopped_message(args.command, stopped), file=sys.stderr)
        return 128 + stopped.signum
    except (UserError, OSError) as exc:
        error = as_user_error(exc)
        if error is None or args.verbose:
            raise
        print(f"nni-adabert {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
