"""Shared by the benchmark scripts: run a CLI command, record how and where it ran."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nni_adabert import atomic, runs
from nni_adabert.cli import main
from nni_adabert.config import RetrainConfig, SearchConfig
from nni_adabert.data.tasks import TASKS, get_task
from nni_adabert.model.pretrained import ARCH_FILE
from nni_adabert.model.space import StudentConfig
from nni_adabert.teacher.finetune import read_teacher_info
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.evaluate import majority_class_metrics
from nni_adabert.workflows.retrain import ArchToRetrain, retrain_run_settings, run_retrain
from nni_adabert.workflows.search import run_search, search_run_settings
from nni_adabert.workflows.speed import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The folders of bench/results: one per benchmark, one per run inside it (bench/results/README.md).
BENCHMARKS = ("teacher", "search", "retrain", "compression", "adaptiveness", "ablation", "beta-sweep",
              "beta-calibration", "search-step", "latency", "pipeline", "pairs", "knowledge-build", "budget-sweep",
              "candidates", "group-by-length", "retrain-recipes", "retrain-step")
DEFAULT_RUN = "default"
RESULT_JSON, RESULT_MD = "result.json", "result.md"
GLUE_DIR = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue"))


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}, {platform.platform()}"


def command_line(argv: list[str]) -> str:
    """This process's command line as a user would type it again: ``OMP_NUM_THREADS`` and the
    ``nice`` level when set, the interpreter relative to the working directory, then ``argv``."""
    python = Path(sys.executable)
    python = python.relative_to(Path.cwd()) if python.is_relative_to(Path.cwd()) else Path(python.name)
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    nice = f"nice -n {os.nice(0)} " if os.nice(0) > 0 else ""
    return env + nice + shlex.join([str(python), *argv])


def cli_command(argv: list[str]) -> str:
    """The command line of ``nni-adabert argv``, as the result pages record it."""
    return "nni-adabert " + shlex.join(argv)


def run_cli(argv: list[str]) -> str:
    """Run ``nni-adabert argv`` in this process; fail loudly; return the command line."""
    command = cli_command(argv)
    print(f"\n$ {command}\n", flush=True)
    if main(argv) != 0:
        sys.exit(f"failed: {command}")
    return command


TIMING_KEYS = ("command", "minutes", "seconds")
# What a page says of its steps' minutes (timed).
MINUTES_NOTE = ("wall time on this machine; a search or retraining found finished, run by an earlier command: "
                "the time its run trained, from its record (0.0 in records of before it kept one); a teacher "
                "found finished: its fine-tuning's, from its record, without the store build; another step "
                "found finished: 0.0")
# The timings of the result page being rewritten (keep_earlier_timings), by command.
_earlier_timings: dict[str, dict] = {}


def timed(argv: list[str]) -> dict:
    """:func:`run_cli`, timed: ``{"command": ..., "minutes": ..., "seconds": ...}`` (wall time, one decimal);
    a command the page being rewritten timed before keeps that timing (:func:`keep_earlier_timings`). A search,
    retraining or teacher found finished (or resumed) counts the time its run trained over all its starts
    (:func:`run_training_seconds`), when longer than this command's: the time it took, not the moment of
    finding it."""
    start = time.perf_counter()
    command = run_cli(argv)
    seconds = max(time.perf_counter() - start, run_training_seconds(argv))
    return _earlier_timings.get(command, {"command": command, "minutes": round(seconds / 60, 1),
                                          "seconds": round(seconds, 1)})


def run_training_seconds(argv: list[str]) -> float:
    """The seconds the run that ``nni-adabert argv`` wrote (its ``--output-dir``) trained, over all its
    starts, as its record says: a student's architecture.json, a teacher's adabert_teacher.json (its
    fine-tuning, not the store build); 0 for other commands and records without them."""
    if "--output-dir" not in argv:
        return 0.0
    out = Path(argv[argv.index("--output-dir") + 1])
    if argv[0] == "teacher":
        record = read_teacher_info(out / "teacher") or {}
    else:
        student = out / ARCH_FILE
        record = json.loads(student.read_text()) if student.is_file() else {}
    return record.get("train_seconds") or 0.0


def keep_earlier_timings(out: Path) -> None:
    """From now on :func:`timed` gives a command the timing that the result page in ``out`` recorded
    for it (any object of its result.json with a command and its minutes). The benches resume: a step
    the page timed when it ran is only found finished when the bench is started again, and its
    minutes should stay those it took, not the 0.0 of finding it."""
    _earlier_timings.clear()
    page = out / RESULT_JSON
    stack = [json.loads(page.read_text())] if page.is_file() else []
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if isinstance(node.get("command"), str) and "minutes" in node:
                _earlier_timings[node["command"]] = {k: node[k] for k in TIMING_KEYS if k in node}
            stack.extend(node.values())


def recorded_runs(out: Path, **identity) -> dict[str, dict]:
    """The runs that the page in ``out`` recorded, by their retrain command, if its record has the same
    ``identity`` (top-level fields, e.g. the teacher's dev metric or metrics and the store's copies: a teacher
    rebuilt by the same command on the same kind of machine has the same ones); else none, also when an
    identity value is unknown (None). A bench keeps such a run's row when its directory is gone (another
    machine, a cleaned runs directory) instead of running it again (:func:`recorded_run`), so that a table
    grows over sessions. The key is the whole command, with its absolute paths: the same ``--runs-dir``."""
    page = out / RESULT_JSON
    earlier = json.loads(page.read_text()) if page.is_file() else {}
    return {run["retrain"]["command"]: run for run in earlier.get("runs", [])} if _same(earlier, identity) else {}


def recorded_run(retrained: Path, retrain_argv: list[str], recorded: dict[str, dict], **identity) -> dict | None:
    """The page's record of a run to keep as it is, marked ``recorded`` (its directory holds no finished
    retraining, the page has its command, and the run's own fields equal ``identity``: e.g. the dev metrics of
    the teacher of its store, where a table has several), else None: the run is retrained or found finished."""
    command = cli_command(retrain_argv)
    earlier = None if (retrained / ARCH_FILE).is_file() else recorded.get(command)
    if earlier is None or not _same(earlier, identity):
        return None
    print(f"{command}: recorded on the page, its run is gone: not run again", flush=True)
    return {**earlier, "recorded": True}


def _same(record: dict, identity: dict) -> bool:
    """Whether ``record`` has every field of ``identity`` with its value; an unknown (None) value never matches."""
    return all(value is not None and record.get(key) == value for key, value in identity.items())


def logged_epochs(log_dir: Path, prefix: str) -> list[dict]:
    """Per-epoch scalars named ``<prefix>*`` in a run's TensorBoard log (``log_dir``), one dict per epoch:
    a teacher's ``dev_accuracy``, a student's ``val_acc``. Empty when nothing was logged."""
    events = EventAccumulator(str(log_dir)).Reload()
    per_name = {tag: [event.value for event in events.Scalars(tag)]
                for tag in events.Tags()["scalars"] if tag.startswith(prefix)}
    epochs = min((len(values) for values in per_name.values()), default=0)
    return [{"epoch": i + 1, **{tag: values[i] for tag, values in per_name.items()}} for i in range(epochs)]


def store_copies(store) -> int:
    """The augmented copies per original train row a knowledge store was built with (0: none)."""
    return ((store.meta.get("inputs") or {}).get("augment") or {}).get("copies", 0)


def store_precision(store) -> str:
    """The precision a knowledge store's teacher pass ran in (stores of before the setting: fp32)."""
    return (store.meta.get("inputs") or {}).get("teacher_precision", "fp32")


def store_step(task: str, data: str, model: Path, copies: int, precision: str, out_dir: Path, cache_dir: Path) -> dict:
    """:func:`timed` ``nni-adabert teacher --no-finetune``: a knowledge store of the fine-tuned teacher ``model``
    with ``copies`` augmented copies per row, built in ``precision`` (a table's stores in one precision, so
    that its rows differ by their copies alone)."""
    return timed(["teacher", "--task", task, "--data", data, "--model", str(model), "--no-finetune",
                  "--aug-copies", str(copies), "--inference-precision", precision, "--output-dir", str(out_dir),
                  "--cache-dir", str(cache_dir), "--no-progress"])


def results_dir(benchmark: str, name: str | None = None, root: Path = RESULTS) -> Path:
    """``<root>/<benchmark>/<run>/`` (``root``: bench/results), created if missing: the folder of one
    run's result files.

    ``name`` is a script's ``--name``. A name that starts with a benchmark's name files the run under
    that benchmark (``beta_sweep.py --name beta-calibration-SST-2`` -> ``beta-calibration/SST-2``,
    ``search.py --name retrain-SST-2-x`` -> ``retrain/SST-2-x``; so the flat names of the results
    from before this layout name the same folders); a name that is only a benchmark's (a script's
    default) is that benchmark's ``default`` run; any other name is a run of ``benchmark``."""
    run = name or benchmark
    for known in sorted(BENCHMARKS, key=len, reverse=True):  # "search-step" before "search"
        if run == known or run.startswith(known + "-"):
            benchmark, run = known, run[len(known) + 1:] or DEFAULT_RUN
            break
    out = root / benchmark / run
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(out: Path, result: dict, markdown: str) -> None:
    """Write a run's record into its folder ``out`` (:func:`results_dir`): result.json and result.md."""
    atomic.write_json(out / RESULT_JSON, result)
    atomic.write_text(out / RESULT_MD, markdown)
    print(f"wrote {out / RESULT_JSON} and {RESULT_MD}")


# --------------------------------------------------------------------------- the paper-table benchmarks

RUNS = ROOT / "runs" / "bench"


def prepare(parse_args, argv: list[str] | None):
    """A bench's start: its arguments, the thread count fixed, every task's teacher store.
    Returns ``(argv, args, {task: store})`` (``argv`` for the recorded command line)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = per_task(args.teacher_runs, "--teacher-runs")
    return argv, args, {task: teacher_store(task, runs.get(task)) for task in args.tasks}


def run_record(script: str, argv: list[str], args, stores: dict) -> dict:
    """What every paper-table result records first: the command, the machine, the scale."""
    return {"command": command_line([script, *argv]), "cpu": cpu_model(), "machine": machine(),
            "torch": torch.__version__, "threads": args.threads, "tasks": args.tasks,
            "scale": scale_text(stores, args), "references": references(stores), "settings": vars(args)}


def publish(out: Path, result: dict, findings, markdown) -> int:
    """Add ``findings(result)``, write ``result`` and ``markdown(result)`` into the run folder ``out``
    (:func:`results_dir`), print the table."""
    result["findings"] = findings(result)
    text = markdown(result)
    write_results(out, result, text)
    print(text)
    return 0


def teacher_store(task: str, run: str | None = None):
    """The knowledge store of the teacher run ``runs/bench/<run>`` (default: ``teacher-<task>``,
    what ``bench/teacher_probes.sh TASK`` writes)."""
    return open_teacher_run(RUNS / (run or f"teacher-{task}"))


def train_rows(store, originals: int | None, augmented: bool = True) -> dict:
    """``SearchConfig`` row settings: the first ``originals`` original train rows and, when
    ``augmented``, the augmented rows made from them (the store keeps up to ``copies`` per
    original, in the originals' order), else none."""
    n_orig = store.meta["num_train_original"]
    n = n_orig if originals is None else min(originals, n_orig)
    return {"train_limit": n, "augmented_limit": n * store_copies(store) if augmented else 0}


def run_dir(kind: str, task: str, run_identity: dict) -> Path:
    """``runs/bench/<kind>/<task>-<hash of the run's identity>``: one directory per distinct run
    (:func:`nni_adabert.runs.identity`: its settings and knowledge store), so the benchmarks share a
    run whenever they ask for the same one (``run_search`` / ``run_retrain`` return it finished)."""
    digest = hashlib.sha256(json.dumps(run_identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return RUNS / kind / f"{task}-{digest}"


@contextlib.contextmanager
def exclusive(out: Path):
    """Hold ``out``'s lock: benchmarks run side by side share runs, and the second one to
    reach a run waits for the first to finish it (then finds it finished)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def search(store, config: SearchConfig) -> dict:
    """``run_search`` into :func:`run_dir`; the exported document plus its ``dir``."""
    out = run_dir("search", store.meta["task"], runs.identity(search_run_settings(config, store), store))
    with exclusive(out):
        return {**run_search(store, out, config, progress=False), "dir": str(out.relative_to(ROOT))}


def retrain(arch: dict, source: dict, store, config: RetrainConfig, space: StudentConfig) -> dict:
    """``run_retrain`` of ``arch`` (fresh weights, KD from ``store``) into :func:`run_dir`;
    ``space``: the config of the space ``arch`` comes from (:meth:`ArchToRetrain.of_space`)."""
    chosen = ArchToRetrain.of_space(arch, source, space, store)
    out = run_dir("retrain", store.meta["task"], runs.identity(retrain_run_settings(chosen, config, store), store))
    with exclusive(out):
        doc = run_retrain(chosen, store, out, config, progress=False)
        return {**doc, "dir": str(out.relative_to(ROOT))}


def student_row(doc: dict) -> dict:
    """What the result files keep of an exported student's document."""
    keys = ("task", "dev_metrics", "depth", "params", "params_without_embedding", "flops", "architecture", "dir")
    return {k: doc[k] for k in keys if k in doc}


def main_metric(task: str) -> str:
    return get_task(task).main_metric


def percent(doc: dict, metric: str) -> float:
    return round(100 * doc["dev_metrics"][metric], 2)


def header(title: str, command: str, threads: int, scale: str) -> list[str]:
    """The first lines of every benchmark's Markdown: command, machine, scale."""
    return [f"# {title}", "", f"Command: `{command}`", "",
            f"Machine: {cpu_model()}, {threads} torch thread(s), torch {torch.__version__} ({machine()}).", "",
            f"Scale: {scale}", ""]


def add_scale_args(p, tasks: list[str], name: str) -> None:
    """The settings every paper-table benchmark shares (each script adds its own); ``name``: the
    default base name of its result files."""
    p.add_argument("--tasks", nargs="+", default=tasks, help="GLUE tasks (their teacher runs must exist)")
    p.add_argument("--rows", nargs="+", default=[], metavar="TASK=N",
                   help="original train rows per task (default: all), plus the augmented rows made from them")
    p.add_argument("--teacher-runs", nargs="+", default=[], metavar="TASK=RUN",
                   help="a task's teacher run under runs/bench (default: teacher-<TASK>)")
    p.add_argument("--epochs", type=int, default=2, help="search epochs, warm-up included")
    p.add_argument("--warmup-epochs", type=int, default=1, help="weights-only epochs before the architecture moves")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs of the derived child after the search")
    p.add_argument("--retrain-epochs", type=int, default=2, help="epochs of a retrained child (fresh weights)")
    p.add_argument("--arc-lr", type=float, default=3e-3, help="Adam learning rate of the architecture")
    p.add_argument("--beta", type=float, default=4.0, help="efficiency-loss weight β")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds of the runs (several: mean ± std where the benchmark repeats its runs)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--name", default=name, help=f"run name: results go to bench/results/{name}/<name>/ (default: "
                                                f"{name}, i.e. bench/results/{name}/default/; give another to keep a "
                                                "run with other settings beside it; a name that starts with another "
                                                "benchmark's name, e.g. beta-calibration-SST-2, files the run there)")


def per_task(items: list[str], option: str, cast=str) -> dict:
    """``["TASK=VALUE", ...]`` as ``{TASK: cast(VALUE)}``; exits naming ``option`` on a malformed
    item or an unknown task."""
    out = {}
    for item in items:
        task, sep, value = item.partition("=")
        if not sep or task not in TASKS:
            sys.exit(f"{option}: expected TASK=VALUE with TASK one of {', '.join(TASKS)}; got {item!r}")
        try:
            out[task] = cast(value)
        except ValueError:
            sys.exit(f"{option}: {item!r}: {value!r} is not a valid value")
    return out


def rows_per_task(args) -> dict[str, int]:
    return per_task(args.rows, "--rows", int)


def search_settings(store, args, augmented: bool = True, **overrides) -> SearchConfig:
    """The benchmarks' search recipe on ``store`` (``SearchConfig``), from :func:`add_scale_args`."""
    settings = dict(epochs=args.epochs, warmup_epochs=args.warmup_epochs, finetune_epochs=args.finetune_epochs,
                    arc_lr=args.arc_lr, beta=args.beta, seed=args.seeds[0],
                    **train_rows(store, rows_per_task(args).get(store.meta["task"]), augmented))
    return SearchConfig(**{**settings, **overrides})


def retrain_settings(store, args, augmented: bool = True, **overrides) -> RetrainConfig:
    """The benchmarks' recipe for retraining a fixed child from fresh weights on ``store``."""
    settings = dict(epochs=args.retrain_epochs, seed=args.seeds[0],
                    **train_rows(store, rows_per_task(args).get(store.meta["task"]), augmented))
    return RetrainConfig(**{**settings, **overrides})


def scale_text(stores: dict, args) -> str:
    """The scale of a run, for the Markdown."""
    parts = []
    for task, store in stores.items():
        rows = train_rows(store, rows_per_task(args).get(task))
        parts.append(f"{task}: first {rows['train_limit']:,} of {store.meta['num_train_original']:,} original train "
                     f"rows + {min(rows['augmented_limit'], store.meta['num_train_augmented']):,} augmented rows "
                     f"made from them, all {store.meta['num_dev']:,} dev rows")
    return ("; ".join(parts) + f". Search: {args.epochs} epoch(s) ({args.warmup_epochs} weights-only warm-up), "
            f"then {args.finetune_epochs} epoch(s) of fine-tuning the derived child; batch 64; "
            f"seed(s) {', '.join(map(str, args.seeds))}.")


def references(stores: dict) -> dict:
    """Per task: the teacher's dev metrics, its best layer probe, and the majority-class baseline on dev."""
    out = {}
    for task, store in stores.items():
        out[task] = {"teacher_run": Path(store.meta["teacher_dir"]).parent.name,
                     "teacher": (read_teacher_info(store.meta["teacher_dir"]) or {}).get("dev_metrics"),
                     "best_probe_accuracy": max(store.meta["probe_dev_accuracy"]),
                     "majority": majority_class_metrics(store)}
    return out


def teacher_run(task: str, ref: dict) -> str:
    """`` (runs/bench/<run>)`` when a task's teacher is not its default run, for the Markdown."""
    run = ref.get("teacher_run")
    return f" (runs/bench/{run})" if run and run != f"teacher-{task}" else ""


def reference_text(refs: dict) -> str:
    fmt = lambda m: ", ".join(f"{k} {100 * v:.2f}" for k, v in (m or {}).items())  # noqa: E731
    return "References on dev: " + "; ".join(
        f"{task}: teacher{teacher_run(task, r)} {fmt(r['teacher'])} "
        f"(best layer probe: accuracy {100 * r['best_probe_accuracy']:.2f}), "
        f"majority class {fmt(r['majority'])}" for task, r in refs.items()) + "."
