"""A measured latency model of the space: what a child costs in seconds on this machine.

Parameters and FLOPs (:mod:`cost`) do not say how fast a child runs: a pooling op has no FLOPs
worth counting but still reads and writes every element, a dilated convolution has the FLOPs
of a plain one but not its speed. So the speed budget of the search (``--min-speedup``) reads
a :class:`LatencyTable` measured once on the machine that will run the student
(:func:`measure_latency`; ``workflows.speed.latency_table`` caches it):

- ``op_seconds[o]``: one edge running op ``o`` (the frozen child skips ``zero`` edges: 0);
- ``cell_seconds``: one cell besides its edges (the node attention, the sums);
- ``once_seconds``: the rest (embedding, pooling, classifier);
  these three fitted (:func:`fit_additive`) to 1- and 2-cell children with one op on every edge;
- ``reference_seconds``: the reference model (the BERT-base architecture or the teacher's)
  over the same examples, built from its config with 1 and 2 layers (timed in one round-robin with
  the children) and extrapolated to all of them (its layers are identical, so its time is linear in
  their number).

A child's time is additive like its size: ``once + K * (cell + sum over edges of op)``, so the
expected time under the architecture distributions is differentiable like
:func:`cost.expected_child_params`, and the budgeted derivation (:mod:`nas.budget`) handles
both alike. All times are of one pass over the same timing batches (batch 128 by default,
real dev lengths), so only ratios mean anything. The sum is a prediction: :func:`measure_speedups`
times given children beside the reference on the same batches, as ``search`` does with its
candidates under a speed budget.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Sequence

import torch
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from . import cost
from .space import AdaBertStudent, StudentConfig, uniform_arch

__all__ = ["LatencyTable", "measure_latency", "measure_speedups", "fit_additive", "time_runs"]

# 2: ops timed inside 2-cell children (1 timed them alone, 15-25% off); 3: contiguous cell inputs, a faster average
# pool (2 predicted pool-heavy deep children up to 3x too fast) and a least-squares fit of 1- and 2-cell children (2
# differenced two zero-edge children: 1-cell children up to 24% too fast), the reference timed in the same round-robin.
# Another version's table is measured again.
FORMAT_VERSION = 3


@dataclass
class LatencyTable:
    """Seconds of one pass over the timing batches (see the module docstring).

    ``setting`` records what was measured where: machine, torch version, threads, batch size,
    the batches' lengths, the width and op list, the reference model.
    """

    op_seconds: Dict[str, float]
    cell_seconds: float
    once_seconds: float
    reference: str
    reference_seconds: float
    setting: Dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def child_seconds(self, config: StudentConfig, arch: Mapping[str, Any]) -> float:
        """Predicted seconds of the child ``arch``."""
        return cost.additive_cost(config, arch, self.op_seconds, self.cell_seconds, self.once_seconds)

    def speedup(self, config: StudentConfig, arch: Mapping[str, Any]) -> float:
        """Predicted speedup of the child ``arch`` over the reference."""
        return self.reference_seconds / self.child_seconds(config, arch)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        """The table of :meth:`to_dict`; a ``ValueError`` for a table of another :data:`FORMAT_VERSION`."""
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {d.get('version')!r}, this nni-adabert measures version {FORMAT_VERSION}")
        return cls(**{k: d[k] for k in ("op_seconds", "cell_seconds", "once_seconds", "reference",
                                         "reference_seconds", "setting", "version")})


def time_runs(runs: Mapping[str, tuple[Callable, list]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """The one timing loop: ``{name: (fn, batches)}`` -> ``{name: [seconds per pass over its batches]}``.

    ``warmup`` untimed passes each, then ``repeats`` timed passes, round-robin over the
    runs (run 1, run 2, ..., run 1, run 2, ...) so that a change in the machine's load
    during the measurement hits every run alike.
    """
    with torch.inference_mode():
        for _ in range(warmup):
            for fn, batches in runs.values():
                for b in batches:
                    fn(b)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, (fn, batches) in runs.items():
                start = time.perf_counter()
                for b in batches:
                    fn(b)
                times[name].append(time.perf_counter() - start)
    return times


def _student_batches(config: StudentConfig, batch_size: int, lengths: Sequence[int]) -> List[Dict[str, torch.Tensor]]:
    """Random token ids of each length (speed does not depend on which ids)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for length in lengths:
        ids = torch.randint(1, config.vocab_size, (batch_size, length), generator=g)
        batch = {"input_ids_a": ids, "attention_mask_a": torch.ones_like(ids)}
        if config.is_pair:
            batch.update(input_ids_b=ids.clone(), attention_mask_b=torch.ones_like(ids))
        batches.append(batch)
    return batches


def _uniform_child(config: StudentConfig, op: str, depth: int) -> AdaBertStudent:
    """``depth`` cells with ``op`` on every edge."""
    return AdaBertStudent(config, uniform_arch(config, op, depth)).eval()


def _reference_runs(reference_config: PretrainedConfig, batch_size: int, lengths: Sequence[int],
                    layer_counts: Sequence[int] = (1, 2)) -> dict[int, tuple[Callable, list]]:
    """``{layers: (fn, batches)}`` of copies of the reference model with each of ``layer_counts`` layers
    (1 and 2 by default) over batches of ``lengths``: its layers are identical, so its time is
    ``t1 + (layers - 1) * (t2 - t1)``."""
    runs = {}
    for layers in layer_counts:
        cfg = copy.deepcopy(reference_config)
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(cfg).eval()
        g = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(1, cfg.vocab_size, (batch_size, n), generator=g),
                    "token_type_ids": torch.zeros(batch_size, n, dtype=torch.long)} for n in lengths]
        runs[layers] = ((lambda m: lambda b: m(**b))(model), batches)
    return runs


def fit_additive(config: StudentConfig, seconds: Mapping[tuple[str, int], float]
                 ) -> tuple[float, float, Dict[str, float]]:
    """``(once, cell, {op: seconds of one edge})`` of the additive model ``once + K * (cell + edges *
    op)`` fitted to the times of uniform children ``{(op, K): seconds}`` by least squares on the
    relative error (a speedup is a ratio), clamped at 0; ``zero`` edges cost nothing (the frozen
    child skips them).

    Fitting every child at once, rather than differencing two of them, keeps the small terms (once,
    cell) from being lost in the noise of the fastest children's times."""
    ops = [op for op in config.op_names if op != "zero"]
    edges = len(config.edge_labels)
    keys = list(seconds)
    design = torch.zeros(len(keys), 2 + len(ops), dtype=torch.float64)
    for row, (op, depth) in enumerate(keys):
        design[row, 0], design[row, 1] = 1.0, depth
        if op != "zero":
            design[row, 2 + ops.index(op)] = depth * edges
    target = torch.tensor([seconds[k] for k in keys], dtype=torch.float64)
    weight = 1.0 / target
    solution = torch.linalg.lstsq(design * weight[:, None], (target * weight)[:, None]).solution.squeeze(1)
    solution = solution.clamp(min=0.0).tolist()
    op_seconds = {op: 0.0 if op == "zero" else solution[2 + ops.index(op)] for op in config.op_names}
    return solution[0], solution[1], op_seconds


def _with_reference(runs: Mapping[Any, tuple[Callable, list]], reference_config: PretrainedConfig, batch_size: int,
                    reference_lengths: Sequence[int], repeats: int) -> tuple[float, dict[Any, float]]:
    """Time ``runs`` and the reference's 1- and 2-layer copies in one round-robin (a speedup is a
    ratio of times, which a load change between two measurements would bias: the reference timed
    after the children was 8-14% off); ``(reference seconds extrapolated to all its layers,
    {key: median seconds})``."""
    runs = {**runs, **{("reference", layers): run
                       for layers, run in _reference_runs(reference_config, batch_size, reference_lengths).items()}}
    seconds = {key: statistics.median(times) for key, times in time_runs(runs, repeats).items()}
    one, two = seconds.pop(("reference", 1)), seconds.pop(("reference", 2))
    return one + (reference_config.num_hidden_layers - 1) * max(two - one, 0.0), seconds


def _child_run(child: AdaBertStudent, batches: list) -> tuple[Callable, list]:
    return (lambda b: child(**b, return_probes=False)), batches


def measure_latency(config: StudentConfig, lengths: Sequence[int], reference_lengths: Sequence[int],
                    reference_config: PretrainedConfig, reference: str, batch_size: int = 128,
                    repeats: int = 5, threads: int | None = 1) -> LatencyTable:
    """Measure a :class:`LatencyTable` for the space ``config`` on this machine.

    Args:
        lengths: the student's padded length of each timing batch (both texts of a pair are
            padded to one length).
        reference_lengths: the reference model's packed length of the same batches.
        reference_config: a Hugging Face config of the reference (its weights do not matter).
        threads: intra-op threads during the measurement (restored after); ``None``: as set.
    """
    with _threads(threads):
        batches = _student_batches(config, batch_size, lengths)
        # Ops are timed inside children, not alone (an op alone ran 15-25% off its time in a child):
        # every op at depths 1 and 2.
        runs = {(op, depth): _child_run(_uniform_child(config, op, depth), batches)
                for op in config.op_names for depth in (1, 2)}
        reference_seconds, seconds = _with_reference(runs, reference_config, batch_size, reference_lengths, repeats)
        once_seconds, cell_seconds, op_seconds = fit_additive(config, seconds)
        setting = {"batch_size": batch_size, "lengths": list(lengths), "reference_lengths": list(reference_lengths),
                   "threads": torch.get_num_threads(), "repeats": repeats, "embed_dim": config.embed_dim,
                   "op_names": list(config.op_names), "is_pair": config.is_pair, "num_labels": config.num_labels,
                   "num_nodes": config.num_nodes, "torch": torch.__version__}
    return LatencyTable(op_seconds, cell_seconds, once_seconds, reference, reference_seconds, setting)


def measure_speedups(config: StudentConfig, archs: Sequence[Mapping[str, Any]], table: LatencyTable,
                     reference_config: PretrainedConfig, repeats: int = 5) -> List[float]:
    """Measured speedup over the reference of each child of ``archs``, on the batches ``table`` was
    measured on (its lengths, batch size and threads). The table predicts a child's time by
    adding its ops' (median error 4% on SST-2, but cells of pools up to 14% too fast); the
    budget's last word is the child itself, timed."""
    setting = table.setting
    with _threads(setting["threads"]):
        batches = _student_batches(config, setting["batch_size"], setting["lengths"])
        runs = {i: _child_run(AdaBertStudent(config, arch).eval(), batches) for i, arch in enumerate(archs)}
        reference_seconds, seconds = _with_reference(runs, reference_config, setting["batch_size"],
                                                     setting["reference_lengths"], repeats)
    return [reference_seconds / seconds[i] for i in range(len(archs))]


@contextlib.contextmanager
def _threads(threads: int | None):
    """``threads`` intra-op threads inside the block (``None``: as set), restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
