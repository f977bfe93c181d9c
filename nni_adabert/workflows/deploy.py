"""Deploying a trained student: BatchNorm folded into the convolutions, exported to ONNX.

:func:`fold_batchnorm` turns every ``ReLU -> Conv1d -> BatchNorm1d`` op of an eval-mode
student into ``ReLU -> Conv1d`` with the BatchNorm's affine map in the conv's weights
and bias (torch's ``fuse_conv_bn_eval``). :func:`export_onnx` writes the folded student
as an ONNX graph (token ids and masks -> logits, dynamic batch and length) and checks
it against the eager student before the file appears; :class:`OnnxStudent` runs it
with ONNX Runtime. ONNX is a protobuf of operators and weights: loading it runs no
Python code, like our safetensors weights and JSON architectures.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import atomic
from ..data.encoding import pad_batches, student_id_keys
from ..errors import UserError
from ..logs import quiet_loggers
from ..model.ops import MaskedMaxPool, ReLUConvBN
from ..model.space import AdaBertStudent
from ..teacher.knowledge import KnowledgeStore, open_knowledge
from .export import ArchitectureFile, check_fits, load_student

FORMAT = "nni-adabert/deployed-student"
ONNX_FILE = "student.onnx"
INT8_SUFFIX = ".int8.onnx"  # student.onnx -> student.int8.onnx: the dynamically quantized graph
ATOL = 1e-4  # largest |logit difference| to the eager student that an export may show


class FoldedReLUConv(nn.Module):
    """:class:`ReLUConvBN` with its eval-mode BatchNorm folded into the conv.

    Args:
        x: ``[B, D, L]``; mask: ``[B, 1, L]``.

    Returns:
        ``[B, D, L]``, zero on padded positions.
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(x)) * mask  # the folded bias must not leak onto padding


def fold_batchnorm(student: AdaBertStudent) -> AdaBertStudent:
    """An eval-mode copy of ``student`` whose conv ops carry their BatchNorm in the conv
    (no BatchNorm module left); ``student`` itself is unchanged. Same logits, up to float rounding."""
    folded = copy.deepcopy(student).eval()
    for cell in folded.cells:
        for label, op in cell.edges.items():
            if isinstance(op, ReLUConvBN):
                cell.edges[label] = FoldedReLUConv(fuse_conv_bn_eval(op.conv, op.bn))
    return folded


class _ExportMaxPool(MaskedMaxPool):
    """The same window max through ``max_pool2d``: torch.export (2.13) pins the length of
    ``max_pool1d``'s input to the example's, which would give a graph for one length only."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.max_pool2d(x.unsqueeze(2), (1, k), 1, (0, k // 2)).squeeze(2)


class _Logits(nn.Module):
    """The exported graph: ids and masks ``[B, L]`` (both texts of a pair share ``L``) -> logits ``[B, C]``."""

    def __init__(self, student: AdaBertStudent):
        super().__init__()
        self.student = student

    def forward(self, input_ids_a, attention_mask_a, input_ids_b=None, attention_mask_b=None):
        return self.student(input_ids_a, attention_mask_a, input_ids_b, attention_mask_b, return_probes=False).logits


def input_names(is_pair: bool) -> list[str]:
    """The graph's inputs, named like the keys of :func:`data.encoding.pad_batch`."""
    names = ["input_ids_a", "attention_mask_a"]
    return names + ["input_ids_b", "attention_mask_b"] if is_pair else names


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@contextlib.contextmanager
def _quiet_export():
    # The exporter logs every optimizer pass and warns about torchvision ops and deprecations:
    # nothing about our graph (a real failure raises).
    with quiet_loggers("torch.onnx", "onnx_ir", "onnxscript"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(student: AdaBertStudent, path: str | os.PathLike, check_batches: list[dict],
                metadata: dict | None = None, atol: float = ATOL) -> dict:
    """Fold ``student``'s BatchNorms, export it to ONNX at ``path`` and check it.

    ``check_batches``: dicts as :func:`data.encoding.pad_batch` makes them (``input_ids_a`` ``[B, L]``,
    ``attention_mask_a``, and ``_b`` for pairs). The file is written only when the folded
    student and then the ONNX graph give the eager student's logits within ``atol`` on
    every batch; else :class:`UserError` and nothing at ``path``. ``metadata`` (strings)
    goes into the model's metadata. Returns the largest differences seen.
    """
    if not check_batches:
        raise UserError(f"no dev examples to check the export on; {path} was not written")
    student = student.eval()
    folded = fold_batchnorm(student)
    report = {"batchnorms_folded": sum(isinstance(m, FoldedReLUConv) for m in folded.modules()),
              "checked_examples": sum(len(b["input_ids_a"]) for b in check_batches)}

    def check(key: str, what: str, model) -> None:
        with torch.inference_mode():
            diff = max(_max_diff(model(b), student(**b, return_probes=False).logits) for b in check_batches)
        report[f"{key}_max_abs_diff"] = diff
        if diff > atol:
            raise UserError(f"{what} does not reproduce the eager student's logits on "
                            f"{report['checked_examples']} dev examples (largest difference {diff:.2e}, "
                            f"allowed {atol:.0e}); {path} was not written")

    check("folded", "the student with BatchNorm folded", lambda b: folded(**b, return_probes=False).logits)
    program = _onnx_program(folded)
    program.model.metadata_props.update({"format": FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}})
    with atomic.atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
        check("onnx", "the ONNX graph", OnnxStudent(tmp, threads=torch.get_num_threads()))
    report["bytes"] = Path(path).stat().st_size
    return report


def int8_path(fp32_path: str | os.PathLike) -> Path:
    """Where the int8 graph of the fp32 graph at ``fp32_path`` goes: ``student.int8.onnx``."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(fp32_path.name.removesuffix(".onnx") + INT8_SUFFIX)


def quantize_int8(student: AdaBertStudent, fp32_path: str | os.PathLike, check_batches: list[dict]) -> dict:
    """ONNX Runtime's dynamic int8 quantization of the deployed graph at ``fp32_path`` (weights as
    int8, activations quantized on the fly), written to :func:`int8_path`. Quantization changes the
    logits, so the check reports how far and how often the predicted class changes, and refuses
    only a graph that gives no finite logits."""
    output = int8_path(fp32_path)
    model = onnx.load(str(fp32_path))
    # The exporter's intermediate shapes carry its example's batch size; the quantizer's shape
    # inference would take them for fixed ones.
    del model.graph.value_info[:]
    with atomic.atomic_path(output) as tmp:
        with quiet_loggers(""):  # the quantizer's advice to pre-process, on the root logger, on every call
            quantize_dynamic(model, str(tmp), weight_type=QuantType.QInt8)
        quantized = OnnxStudent(tmp, threads=torch.get_num_threads())
        with torch.inference_mode():
            pairs = [(quantized(b), student(**b, return_probes=False).logits) for b in check_batches]
        if not all(torch.isfinite(q).all() for q, _ in pairs):
            raise UserError(f"the int8 graph gives non-finite logits on dev examples; {output} was not written")
    return {"int8_output": str(output), "int8_bytes": output.stat().st_size,
            "int8_max_abs_diff": max(_max_diff(q, e) for q, e in pairs),
            "int8_label_agreement": sum(int((q.argmax(-1) == e.argmax(-1)).sum()) for q, e in pairs)
            / sum(len(q) for q, _ in pairs)}


def _onnx_program(folded: AdaBertStudent):
    """The ONNX program of a folded student (whose max pools it swaps), batch and length axes dynamic."""
    for cell in folded.cells:
        for label, op in cell.edges.items():
            if isinstance(op, MaskedMaxPool):
                cell.edges[label] = _ExportMaxPool(op.kernel_size)
    names = input_names(folded.config.is_pair)
    # Batch 2 and length 8 so that neither axis is mistaken for a constant 1.
    example = tuple(torch.zeros(2, 8, dtype=torch.long) + (i % 2) for i in range(len(names)))
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=2, max=folded.config.max_positions)
    with _quiet_export():
        # torch.export itself: torch.onnx.export would fall back to a fixed-shape graph where an
        # op pins an axis; this raises instead.
        traced = torch.export.export(_Logits(folded).eval(), example, strict=False,
                                     dynamic_shapes={n: {0: batch, 1: length} for n in names})
        return torch.onnx.export(traced, example, None, dynamo=True, input_names=names,
                                 output_names=["logits"], verbose=False)


class OnnxStudent:
    """A deployed student run by ONNX Runtime on CPU with ``threads`` intra-op threads.

    ``student(batch) -> logits [B, C]`` for a ``batch`` from :func:`data.encoding.pad_batch`
    (``input_ids_a``/``attention_mask_a`` ``[B, La]``, and ``_b`` ``[B, Lb]`` for pairs;
    the shorter text is padded here, since the graph has one length axis).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"deployed model {self.path} does not exist "
                            "(write it with `nni-adabert deploy --arch DIR`)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NoSuchFile,
                ort_errors.InvalidArgument, ort_errors.NotImplemented, ort_errors.RuntimeException) as exc:
            raise UserError(f"{self.path} is not a readable ONNX model (expected the student.onnx that "
                            f"`nni-adabert deploy` writes): {str(exc).splitlines()[0][:200]}") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.metadata.get("format") != FORMAT or self.input_names not in (input_names(False), input_names(True)) \
                or outputs != ["logits"]:
            raise UserError(f"{self.path} is an ONNX model but not a deployed nni-adabert student (format "
                            f"{self.metadata.get('format')!r}, inputs {self.input_names}, outputs {outputs}; "
                            f"expected format {FORMAT!r}, inputs {input_names(True)} or the first two, "
                            "outputs ['logits'])")

    @property
    def id_keys(self) -> tuple[str, ...]:
        """The id columns a batch needs (for :func:`data.encoding.pad_batch`)."""
        return tuple(n for n in self.input_names if n.startswith("input_ids"))

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {n: batch[n].numpy() for n in self.input_names}
        if len(self.input_names) == 4:
            length = max(feed["input_ids_a"].shape[1], feed["input_ids_b"].shape[1])
            # Zero ids under a zero mask: exactly what the student does to the shorter text.
            feed = {n: np.pad(v, ((0, 0), (0, length - v.shape[1]))) for n, v in feed.items()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def dev_batches(store, examples: int = 24, batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """The first ``examples`` dev rows of a knowledge store, in batches of differing size and length."""
    dev = store.data["dev"]
    keys = student_id_keys(dev.column_names)
    rows = list(dev.select(range(min(examples, len(dev)))).select_columns(list(keys)))
    return pad_batches(rows, keys, batch_size)


def open_deployed(path: str | os.PathLike | None, arch_file: ArchitectureFile, threads: int | None = None
                  ) -> OnnxStudent:
    """:class:`OnnxStudent` at ``path`` (default: ``student.onnx`` beside the architecture JSON),
    checked to be an export of ``arch_file``'s weights."""
    deployed = OnnxStudent(path or arch_file.path.parent / ONNX_FILE, threads)
    recorded, expected = deployed.metadata.get("weights_sha256"), arch_file.doc.get("weights_sha256")
    if recorded and expected and recorded != expected:
        raise UserError(f"{deployed.path} was exported from other weights than those of {arch_file.path}; "
                        f"run `nni-adabert deploy --arch {arch_file.path.parent}` again")
    return deployed


def recorded_store(arch_file: ArchitectureFile) -> KnowledgeStore:
    """The teacher-knowledge store the student of ``arch_file`` was trained on (its path is in the JSON)."""
    path = arch_file.doc.get("knowledge_store")
    if not path:
        raise UserError(f"{arch_file.path} records no knowledge store; pass the teacher run with --teacher")
    try:
        return open_knowledge(path)
    except UserError as exc:
        raise UserError(f"{exc} (the store recorded in {arch_file.path}); "
                        "pass the teacher run with --teacher") from None


def deploy(arch_file: ArchitectureFile, store=None, output: str | os.PathLike | None = None,
           int8: bool = False) -> dict:
    """Fold, export and check the exported student of ``arch_file`` on dev rows of ``store``
    (default: :func:`recorded_store`); writes ``output`` (default ``student.onnx`` beside
    the architecture JSON) and with ``int8`` its quantized graph (:func:`quantize_int8`).
    Returns :func:`export_onnx`'s report (and :func:`quantize_int8`'s) and ``output``."""
    store = store if store is not None else recorded_store(arch_file)
    check_fits(arch_file, store)
    student = load_student(arch_file)
    output = Path(output) if output else arch_file.path.parent / ONNX_FILE
    metadata = {"task": arch_file.doc.get("task"), "architecture": json.dumps(student.arch),
                "weights_sha256": arch_file.doc.get("weights_sha256", "")}
    batches = dev_batches(store)
    report = {"output": str(output), **export_onnx(student, output, batches, metadata)}
    if int8:
        report.update(quantize_int8(student, output, batches))
    return report
