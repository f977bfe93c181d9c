"""How well do 1- and 2-layer copies of the BERT-base architecture predict its 12 layers' time?

The latency table and the search's candidate timing (``model.latency``) each extrapolate the
reference from 1- and 2-layer copies timed in their round-robin; two such estimates differed by 5.9%
(bench/results/latency/SST-2-candidates). This times copies of 1, 2, 3 and 4 layers and the whole
12-layer model in one round-robin (``model.latency.time_runs``: 1 thread, batch 128, 1 warm-up pass,
``--repeats`` timed passes, the table's dev lengths) and compares, pass by pass, each extrapolation with
the 12 layers timed in the same pass.

    PYTHONPATH=<checkout> python reference_layers.py TABLE.json [--repeats 5]
    python reference_layers.py --render      # rewrite result.md from result.json, no timing

Writes result.json (every pass's seconds) and result.md beside this script.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYERS = (1, 2, 3, 4, 12)
# name -> (layer counts fitted by least squares on a line in the layer count)
EXTRAPOLATIONS = {"1 and 2 layers (today)": (1, 2), "1 and 3 layers": (1, 3), "1 and 4 layers": (1, 4),
                  "2 and 4 layers": (2, 4), "1-4 layers, least squares": (1, 2, 3, 4)}


def measure(table_path: str, repeats: int) -> dict:
    from transformers import BertConfig

    from nni_adabert.model.latency import _reference_runs, _threads, time_runs

    setting = json.loads(Path(table_path).read_text())["setting"]
    with _threads(1):
        runs = _reference_runs(BertConfig(num_labels=2), setting["batch_size"], setting["reference_lengths"], LAYERS)
        times = time_runs({str(layers): run for layers, run in runs.items()}, repeats)
    return {"command": f"python {Path(__file__).name} {table_path} --repeats {repeats}",
            "reference_lengths": setting["reference_lengths"], "batch_size": setting["batch_size"], "times": times}


def extrapolate(seconds: dict, layers: tuple) -> float:
    """The 12-layer time from a line fitted to ``{layers: seconds}`` at ``layers``."""
    xs, ys = list(layers), [seconds[str(n)] for n in layers]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (12 - mx)


def render(result: dict) -> str:
    times = result["times"]
    passes = len(times["12"])
    per_pass = [{k: v[i] for k, v in times.items()} for i in range(passes)]
    median = {k: statistics.median(v) for k, v in times.items()}
    lines = ["# The BERT-base architecture's time: extrapolated from a few layers, or timed whole", "",
             f"Command (code of 0509f66, AMD EPYC, 1 thread, alone): `{result['command']}`", "",
             f"Batch {result['batch_size']}, lengths {result['reference_lengths']} (the table's 512 SST-2 dev rows); "
             "seconds per pass over the four batches:", "",
             "| layers | " + " | ".join(f"pass {i + 1}" for i in range(passes)) + " | median |",
             "|---|" + "---|" * (passes + 1)]
    lines += [f"| {k} | " + " | ".join(f"{t:.2f}" for t in v) + f" | {median[k]:.2f} |" for k, v in times.items()]
    lines += ["", "Each extrapolation against the 12 layers timed in the same pass (estimate over timed, less 1), "
              "and of the medians (as `model.latency` does it):", "",
              "| extrapolated from | " + " | ".join(f"pass {i + 1}" for i in range(passes)) +
              " | spread over the passes | of the medians |", "|---|" + "---|" * (passes + 2)]
    for name, layers in EXTRAPOLATIONS.items():
        errors = [extrapolate(p, layers) / p["12"] - 1 for p in per_pass]
        lines.append(f"| {name} | " + " | ".join(f"{100 * e:+.1f}%" for e in errors) +
                     f" | {100 * (max(errors) - min(errors)):.1f} points | "
                     f"{100 * (extrapolate(median, layers) / median['12'] - 1):+.1f}% |")
    cost = {name: sum(layers) for name, layers in EXTRAPOLATIONS.items()}
    lines += ["", "Cost per pass, in layer-passes (the embedding and head come with every copy): " +
              ", ".join(f"{name}: {c}" for name, c in cost.items()) + "; the whole model: 12."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", nargs="?", help="a cached latency table (JSON): its dev lengths and batch size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--render", action="store_true", help="rewrite result.md from result.json, no timing")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads((HERE / "result.json").read_text())
    else:
        if not args.table:
            p.error("TABLE.json is needed unless --render")
        result = measure(args.table, args.repeats)
        (HERE / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "result.md").write_text(render(result))
    print((HERE / "result.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
