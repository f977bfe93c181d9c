"""The AdaBERT search space (paper section 2.2 / 2.5.1) in NNI 3.0 primitives.

A student is: factorized embedding -> K stacked cells -> a linear classifier on the
pooled output of cell K (plus one linear *probe* per cell, used by the distillation
loss). All K cells share one architecture and each has its own weights.

Text pairs enter one of two spaces (``StudentConfig.space``):

- ``paper``: the two embedded texts are the first cell's two input nodes, as in the paper.
  Ops combine them only position by position (both padded to one length), so a word of
  one text never meets its match at another position of the other;
- ``matching`` (beyond the paper, the default for pairs): each text runs through the cells
  on its own (the batch stacks the B first texts, then the B second texts, the same
  weights for both), an ``align`` op among the candidates compares every position with
  its soft match in the other text, and the probes and the classifier read
  ``[u; v; |u - v|; u * v]`` of the two pooled texts (InferSent / ESIM-style matching),
  each text layer-normalised first (``StudentConfig.norm_texts``): ``u * v`` squares the
  texts' scale, and without the norm a search's classifier input reached |x| > 1,000 and its
  loss exploded.

Single-text tasks have one space (recorded as ``paper``).

Cell (a DAG, like DARTS' but 1-D): input nodes 0 and 1 are ``c_{k-2}`` and ``c_{k-1}``;
intermediate node ``j`` (2..N+1) is ``sum_{i<j} o_{j,i}(h_i)``; the cell output is an
attentive (per-example softmax) sum of the N intermediate nodes. For the first cell
both inputs are the embedded text (single-text task) or the two embedded texts
(pair task); cell 2 gets (input 1, c_1).

How the choices are declared, and why:

- one ``LayerChoice`` per edge, labelled ``edge_{j}_{i}`` (node j from node i). All
  ``K_max`` cells create a LayerChoice with that label, so NNI sees ONE choice per edge
  (the shared alpha_c) while each cell keeps its own candidate weights;
- the layer count is ``nni.choice('depth', [1..K_max])`` held by :class:`depth.DepthChoice`,
  which selects the pooled output of cell K. A ``Categorical`` gives the plain arch
  entry ``"depth": 3`` (an ``InputChoice`` would give ``[2]``) and lets a frozen or
  single-path model run only its first K cells (``cells_needed``). NNI's built-in
  DARTS/GumbelDARTS don't know this module, so the space hands them an adapter
  through NNI's ``extra_oneshot_hooks`` protocol (:class:`nas.supermodules.DifferentiableDepthChoice`:
  a softmax-weighted sum over the K_max cell outputs, exactly what NNI does for an
  ``InputChoice``).

Exported architectures are dicts ``{"edge_2_0": "std_conv_3", ..., "edge_4_3": "skip",
"depth": 3}``; :meth:`AdaBertSpace.freeze` turns one into a plain :class:`AdaBertStudent`
that keeps the supernet's weights.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from nni.mutable import Sample, ensure_frozen
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from ..data.encoding import masked_max, masked_mean
from ..errors import UserError
from .depth import DEPTH_LABEL, DepthChoice
from .ops import OP_NAMES, OPS, PAIR_OP_NAMES, Zero, build_op

__all__ = [
    "StudentConfig", "AdaBertOutput", "AdaBertSpace", "AdaBertStudent",
    "DepthChoice", "Cell", "Embedder", "edges", "edge_label", "edge_labels", "factorized_embedding", "validate_arch",
    "uniform_arch", "random_arch", "reached_nodes", "live_nodes", "input_groups", "any_intermediate", "reads_inputs",
    "DEAD_CELL",
    "SPACES", "POOLINGS", "resolve_space", "default_op_names", "matching_features",
]

SPACES = ("paper", "matching")
# How a cell's output [B, D, L] becomes the [B, D] its probe and the classifier read.
POOLINGS = {"mean": masked_mean, "max": masked_max}



# --------------------------------------------------------------------------- config


@dataclass
class StudentConfig:
    """Everything needed to rebuild a space or a child (saved next to exported archs).

    Attributes:
        vocab_size: WordPiece vocabulary size of the teacher's tokenizer.
        num_labels: number of classes C.
        is_pair: text-pair task (two inputs) or single text.
        space: how a pair enters the cells, ``paper`` or ``matching`` (module docstring);
            architecture files written before it existed load as ``paper``.
        embed_dim: D, width of the factorized embedding and of every cell (128 in the paper).
        k_max: maximum number of cells (8).
        num_nodes: intermediate nodes N per cell (3 -> 9 edges).
        op_names: candidate ops, in the order of architecture logits (``None``: the space's,
            :func:`default_op_names`).
        pad_token_id: used to build a mask when no attention mask is given.
        max_positions: longest sequence accepted (learned position embeddings).
        position_embeddings: add learned position embeddings (pooling/skip ops are
            order-blind; this gives them position information for 128*D params).
        dropout: on the embedding and before the probes / classifier.
        norm_texts: in the matching space, layer-normalise each pooled text (no parameters) before
            the matching features; architecture files written before it existed load without it,
            so their students give the logits they gave.
        pooling: how each cell's output is pooled over its tokens for its probe and the classifier,
            a name of :data:`POOLINGS` (``max``: max over time, as in Kim's 2014 CNN); architecture
            files written before it existed load as ``mean``, what they used.
    """

    vocab_size: int
    num_labels: int
    is_pair: bool = False
    embed_dim: int = 128
    k_max: int = 8
    num_nodes: int = 3
    op_names: Optional[Tuple[str, ...]] = None
    pad_token_id: int = 0
    max_positions: int = 128
    position_embeddings: bool = True
    dropout: float = 0.1

    space: str = "paper"
    norm_texts: bool = True
    pooling: str = "mean"

    def __post_init__(self) -> None:
        for name in ("is_pair", "position_embeddings", "norm_texts"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"student config: {name} must be true or false, got {getattr(self, name)!r}")
        _check_space(self.space, self.is_pair, SPACES, "student config: ")
        if self.pooling not in POOLINGS:
            raise UserError(f"student config: pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        self.op_names = tuple(default_op_names(self.space) if self.op_names is None else self.op_names)
        for name in ("vocab_size", "num_labels", "embed_dim", "k_max", "num_nodes", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"student config: {name} must be a positive integer, got {value!r}")
        if self.num_labels < 2:
            raise UserError(f"student config: num_labels must be >= 2, got {self.num_labels}")
        unknown = [n for n in self.op_names if n not in OPS]
        if unknown or not self.op_names or len(set(self.op_names)) != len(self.op_names):
            raise UserError(f"student config: op_names must be distinct names from "
                            f"{list(default_op_names(self.space))}, got {list(self.op_names)}")
        if set(self.op_names) == {"zero"}:
            raise UserError("student config: op_names must hold an op other than 'zero' (a cell of zeros reads "
                            "nothing)")
        if "align" in self.op_names and self.space != "matching":
            raise UserError("student config: op 'align' compares the two texts of a pair and needs the matching "
                            f"space (this config: {'pair' if self.is_pair else 'single-text'} task, space "
                            f"{self.space!r})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"student config: dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def edge_labels(self) -> List[str]:
        return edge_labels(self.num_nodes)

    @property
    def head_dim(self) -> int:
        """Width the probes and the classifier read: ``4 D`` for the matching features, else ``D``."""
        return 4 * self.embed_dim if self.space == "matching" else self.embed_dim

    @property
    def texts_per_example(self) -> int:
        """Sequences the cells run per example: both texts of a pair in the matching space, else one."""
        return 2 if self.space == "matching" else 1

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (op_names as a list)."""
        d = dataclasses.asdict(self)
        d["op_names"] = list(self.op_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudentConfig":
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`UserError`."""
        if not isinstance(d, Mapping):
            raise UserError(f"student config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"student config: unknown field(s) {unknown}; known: {sorted(names)}")
        # Written before the matching head normalised its texts, and before a cell could be max-pooled.
        d = {"norm_texts": False, "pooling": "mean", **d}
        try:
            return cls(**d)
        except TypeError as exc:
            raise UserError(f"student config: {exc}") from None


def default_op_names(space: str) -> Tuple[str, ...]:
    """The candidate ops of ``space``: the paper's ten, and ``align`` in the matching space."""
    return PAIR_OP_NAMES if space == "matching" else OP_NAMES


def resolve_space(space: str, is_pair: bool) -> str:
    """The space a setting names for a task: ``auto`` is ``matching`` for pairs and ``paper`` for
    single texts; ``matching`` for a single-text task is a :class:`UserError`."""
    if space == "auto":
        return "matching" if is_pair else "paper"
    _check_space(space, is_pair, ("auto",) + SPACES)
    return space


def _check_space(space: str, is_pair: bool, choices: Sequence[str], where: str = "") -> None:
    """A :class:`UserError` unless ``space`` is one of ``choices`` and can hold the task (``where``: what
    the setting belongs to, as the message's prefix)."""
    if space not in choices:
        raise UserError(f"{where}space must be one of {', '.join(choices)}, got {space!r}")
    if space == "matching" and not is_pair:
        others = " or ".join(c for c in choices if c != "matching")
        raise UserError(f"{where}space 'matching' compares the two texts of a pair; this task is single-text "
                        f"(use {others})")


def edge_label(j: int, i: int) -> str:
    """The label of the edge from node ``i`` into node ``j``."""
    return f"edge_{j}_{i}"


def edges(num_nodes: int = 3) -> List[Tuple[int, int]]:
    """The cell's edges as ``(j, i)`` = from node i into node j, in node order: every edge into node
    j before any edge out of it, so a walk in this order sees a node complete before it reads it.

    >>> edges(2)
    [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    """
    return [(j, i) for j in range(2, 2 + num_nodes) for i in range(j)]


def edge_labels(num_nodes: int = 3) -> List[str]:
    """Labels of the cell's edges, ``edge_{j}_{i}`` = op from node i into node j, in node order
    (:func:`edges`).

    >>> edge_labels(3)
    ['edge_2_0', 'edge_2_1', 'edge_3_0', 'edge_3_1', 'edge_3_2', 'edge_4_0', 'edge_4_1', 'edge_4_2', 'edge_4_3']
    """
    return [edge_label(j, i) for j, i in edges(num_nodes)]


def reached_nodes(arch: Mapping[str, Any], num_nodes: int = 3, sources: AbstractSet[int] = frozenset({0, 1})) -> set:
    """The nodes of a cell whose value depends on the input nodes ``sources``: those nodes, and each
    intermediate node with a non-``zero`` edge from a reached node (a pool, ``skip`` or ``align`` of a
    node that is zero everywhere gives zero, a convolution its BatchNorm shift: at most the text's
    length, through the padding at its ends)."""
    reached = set(sources)
    for j, i in edges(num_nodes):
        if arch[edge_label(j, i)] != "zero" and i in reached:
            reached.add(j)
    return reached


def live_nodes(arch: Mapping[str, Any], num_nodes: int = 3) -> set:
    """The nodes of a cell whose value depends on either of its inputs (:func:`reached_nodes`)."""
    return reached_nodes(arch, num_nodes)


def input_groups(config: StudentConfig) -> Tuple[FrozenSet[int], ...]:
    """The inputs a cell must read, as groups of input nodes each of which must reach an intermediate
    node: for a text pair in the ``paper`` space each text alone (the first cell reads ``(a, b)``, the
    k-th ``(c_{k-2}, c_{k-1})``, so a cell fed from node 1 only never sees text a, and one fed from
    node 0 only sees a or b by the parity of K); elsewhere both inputs hold one text, either will do."""
    return (frozenset({0}), frozenset({1})) if config.is_pair and config.space == "paper" else (frozenset({0, 1}),)


def any_intermediate(nodes: AbstractSet[int]) -> bool:
    """Whether a set of nodes (:func:`reached_nodes`) holds an intermediate node, not only inputs."""
    return any(node >= 2 for node in nodes)


def reads_inputs(arch: Mapping[str, Any], config: StudentConfig) -> bool:
    """Whether the cell's output (the attentive sum of its intermediate nodes) depends on its inputs:
    on each of :func:`input_groups`. A cell whose intermediate nodes are all dead (e.g. ``max_pool_3``
    from nodes that are ``zero`` from both inputs) gives texts of one length the same logits; a paper-space
    pair cell fed from one input ignores one text."""
    return all(any_intermediate(reached_nodes(arch, config.num_nodes, group)) for group in input_groups(config))


DEAD_CELL = ("its cell does not read its input (no intermediate node has a path of non-'zero' edges from the "
             "cell's inputs; for a text pair in the paper space, from each of the two), so the student ignores "
             "the text, or one text of the pair, beyond its length")


def validate_arch(arch: Any, config: StudentConfig) -> Dict[str, Any]:
    """Check an architecture dict against ``config``; return it normalized (edge order, then depth).

    Raises :class:`UserError` naming the problem: not a dict, a missing edge, an unknown
    op, an unknown key, or a depth that is not an integer in ``1..k_max``.
    """
    if not isinstance(arch, Mapping):
        raise UserError(f"architecture must be a dict, got {type(arch).__name__}")
    labels = config.edge_labels
    unknown = sorted(set(arch) - set(labels) - {DEPTH_LABEL})
    if unknown:
        raise UserError(f"architecture: unknown key(s) {unknown}; expected {labels + [DEPTH_LABEL]}")
    out: Dict[str, Any] = {}
    for label in labels:
        if label not in arch:
            raise UserError(f"architecture: missing edge {label!r}")
        op = arch[label]
        if op == "align" and config.space != "matching":
            raise UserError(f"architecture: edge {label!r} has op 'align', which compares the two texts of a pair: "
                            "it runs only on text-pair tasks in the matching space")
        if op not in config.op_names:
            raise UserError(f"architecture: edge {label!r} has unknown op {op!r}; "
                            f"known ops: {list(config.op_names)}")
        out[label] = op
    if DEPTH_LABEL not in arch:
        raise UserError(f"architecture: missing {DEPTH_LABEL!r}")
    depth = arch[DEPTH_LABEL]
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= config.k_max:
        raise UserError(f"architecture: depth must be an integer in 1..{config.k_max}, got {depth!r}")
    out[DEPTH_LABEL] = int(depth)
    return out


def uniform_arch(config: StudentConfig, op: str, depth: int) -> Dict[str, Any]:
    """``depth`` cells with ``op`` on every edge (the children the latency table is timed on)."""
    return {**{label: op for label in config.edge_labels}, DEPTH_LABEL: depth}


def random_arch(config: StudentConfig, seed: Optional[int] = None) -> Dict[str, Any]:
    """A uniformly random architecture of the space whose cell reads its inputs
    (:func:`reads_inputs`; the paper's 'Random' baseline)."""
    rng = random.Random(seed)
    while True:  # redrawn until the cell reads its inputs (a dead cell is no student to compare)
        arch: Dict[str, Any] = {label: rng.choice(config.op_names) for label in config.edge_labels}
        arch[DEPTH_LABEL] = rng.randint(1, config.k_max)
        if reads_inputs(arch, config):
            return arch


# --------------------------------------------------------------------------- building blocks


def factorized_embedding(teacher_word_embeddings: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """Project the teacher's word embeddings onto their top-``dim`` principal directions.

    Args:
        teacher_word_embeddings: ``[V, H]`` (e.g. ``bert.embeddings.word_embeddings.weight``).
        dim: output width.

    Returns:
        ``[V, dim]`` float32: the PCA scores of each token (centered rows times the top
        ``dim`` right singular vectors), the best rank-``dim`` approximation of the
        teacher's token geometry. If ``H < dim`` the extra columns are zero (they
        train from there).
    """
    e = teacher_word_embeddings.detach().to(torch.float32)
    if e.dim() != 2:
        raise ValueError(f"teacher word embeddings must be [V, H], got shape {tuple(e.shape)}")
    centered = e - e.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)  # vh: [min(V,H), H]
    k = min(dim, vh.shape[0])
    scores = centered @ vh[:k].T                                  # [V, k]
    if k < dim:
        scores = torch.cat([scores, scores.new_zeros(e.shape[0], dim - k)], dim=1)
    return scores.contiguous()


class Embedder(nn.Module):
    """Token (+ position) embedding -> LayerNorm -> dropout, channels first.

    Args:
        input_ids: ``[B, L]`` long; attention_mask: ``[B, L]`` (1 = token) or ``None``.

    Returns:
        ``(x, mask)``: ``x`` ``[B, D, L]`` zero on padding, ``mask`` ``[B, 1, L]`` float.
    """

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.embed_dim)
        self.position = nn.Embedding(config.max_positions, config.embed_dim) if config.position_embeddings else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.config.max_positions}")
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        mask = attention_mask.to(self.word.weight.dtype).unsqueeze(1)            # [B, 1, L]
        h = self.word(input_ids)                                                  # [B, L, D]
        if self.position is not None:
            h = h + self.position.weight[:length].unsqueeze(0)
        h = self.dropout(self.norm(h))
        # contiguous: ops and sums run up to several times slower on mixed layouts (the latency table assumes one)
        return (h.transpose(1, 2) * mask).contiguous(), mask


class NodeAttention(nn.Module):
    """Cell output = per-example softmax-weighted sum of the intermediate nodes.

    Score of node n: ``w . masked_mean(h_n) + b``; softmax over the N nodes.

    Args:
        nodes: N tensors ``[B, D, L]``; mask: ``[B, 1, L]``.

    Returns:
        ``[B, D, L]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, nodes: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(list(nodes), dim=1)                                  # [B, N, D, L]
        pooled = masked_mean(stacked, mask.unsqueeze(1), dim=-1)                   # [B, N, D]
        weights = torch.softmax(self.score(pooled).squeeze(-1), dim=1)             # [B, N]
        return (stacked * weights[:, :, None, None]).sum(dim=1)


def _apply_edge(edge: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if type(edge) is LayerChoice:
        # The raw (un-mutated) space: NNI's dry run runs the default candidate. (LayerChoice's
        # own forward takes one input; our ops take the mask too.)
        return edge[ensure_frozen(edge.choice, strict=False)](x, mask)
    return edge(x, mask)


class Cell(nn.Module):
    """One cell. ``edges`` maps each edge label to an op (child) or a choice over ops (space).

    Args:
        s0, m0: node 0 (``c_{k-2}``) ``[B, D, L]`` and its mask ``[B, 1, L]``.
        s1, m1: node 1 (``c_{k-1}``) and its mask.

    Returns:
        ``(c_k, mask)``: ``[B, D, L]`` and the union of the input masks ``[B, 1, L]``.
    """

    def __init__(self, num_nodes: int, dim: int, edges: "OrderedDict[str, nn.Module]"):
        super().__init__()
        self.num_nodes = num_nodes
        self.edges = nn.ModuleDict(edges)
        self.attention = NodeAttention(dim)

    def forward(self, s0: torch.Tensor, m0: torch.Tensor, s1: torch.Tensor, m1: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = torch.maximum(m0, m1)
        states, masks = [s0, s1], [m0, m1]
        for j in range(2, 2 + self.num_nodes):
            node: Optional[torch.Tensor] = None
            for i in range(j):
                edge = self.edges[edge_label(j, i)]
                if isinstance(edge, Zero):
                    continue  # a frozen zero edge: nothing to compute (the supernet adds exact zeros)
                out = _apply_edge(edge, states[i], masks[i])
                node = out if node is None else node + out
            states.append(torch.zeros_like(s1) if node is None else node)
            masks.append(mask)
        return self.attention(states[2:], mask), mask


@dataclass
class AdaBertOutput:
    """What a space or a child returns.

    Attributes:
        logits: ``[B, C]``, the final classifier on the pooled output of cell K.
        probe_logits: one ``[B, C]`` per cell that ran (cells 1..K_run), the student probes.
        depth_terms: ``(k, weight)`` pairs: the distillation loss is
            ``sum weight * L_KD(probe_logits[:k])``. A frozen child gives ``[(K, None)]``
            (weight 1); a straight-through supernet gives the depth gate(s), so the KD term
            sends gradient to the depth parameters; NNI's DARTS gives softmax weights.
        depth_logits: ``[B, C]`` per cell that ran: the final classifier on each depth's pooled
            output, when the supernet trains every depth (``train_every_depth``); else empty.
    """

    logits: torch.Tensor
    probe_logits: List[torch.Tensor]
    depth_terms: List[Tuple[int, Optional[torch.Tensor]]] = field(default_factory=list)
    depth_logits: List[torch.Tensor] = field(default_factory=list)


def _embed_inputs(embed: Embedder, config: StudentConfig, input_ids_a, attention_mask_a, input_ids_b, attention_mask_b):
    xa, ma = embed(input_ids_a, attention_mask_a)
    if not config.is_pair:
        if input_ids_b is not None:
            raise ValueError("this student is for single-text tasks but input_ids_b was given")
        return xa, ma, xa, ma
    if input_ids_b is None:
        raise ValueError("this student is for text-pair tasks: input_ids_b is required")
    xb, mb = embed(input_ids_b, attention_mask_b)
    # Ops combine the two texts position-wise, so pad both to the same length.
    la, lb = xa.shape[-1], xb.shape[-1]
    if la < lb:
        xa, ma = nn.functional.pad(xa, (0, lb - la)), nn.functional.pad(ma, (0, lb - la))
    elif lb < la:
        xb, mb = nn.functional.pad(xb, (0, la - lb)), nn.functional.pad(mb, (0, la - lb))
    if config.space == "matching":  # each text on its own: a batch of 2B texts, the first texts, then the second
        x, m = torch.cat([xa, xb]), torch.cat([ma, mb])
        return x, m, x, m
    return xa, ma, xb, mb


def matching_features(pooled: torch.Tensor, norm_texts: bool = True) -> torch.Tensor:
    """``[u; v; |u - v|; u * v]`` ``[B, 4D]`` of the pooled texts ``[2B, D]`` (first texts, then second),
    each text layer-normalised first when ``norm_texts`` (keeps ``u * v`` at unit scale)."""
    if norm_texts:
        pooled = nn.functional.layer_norm(pooled, pooled.shape[-1:])
    u, v = pooled.reshape(2, -1, pooled.shape[-1]).unbind(0)   # a reshape: torch.export keeps B dynamic
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def _run_cells(config: StudentConfig, cells: Sequence[Cell], probes: Sequence[nn.Module], dropout: nn.Module,
               n_run: int, s0, m0, s1, m1, with_probes: bool = True) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Cells 1..``n_run``; returns each cell's pooled output ``[B, head_dim]`` and probe logits."""
    pooled: List[torch.Tensor] = []
    probe_logits: List[torch.Tensor] = []
    for k in range(n_run):
        c, m = cells[k](s0, m0, s1, m1)
        s0, m0, s1, m1 = s1, m1, c, m
        p = POOLINGS[config.pooling](c, m, dim=-1)              # [B, D] ([2B, D] in the matching space)
        if config.space == "matching":
            p = matching_features(p, config.norm_texts)         # [B, 4D]
        pooled.append(p)
        if with_probes:
            probe_logits.append(probes[k](dropout(p)))
    return pooled, probe_logits


# --------------------------------------------------------------------------- space and child


class AdaBertSpace(ModelSpace):
    """The AdaBERT model space: ``K_max`` cells sharing one searched cell + a searched depth.

    Args:
        config: :class:`StudentConfig` (or its dict).
        embedding_init: optional ``[V, D]`` initial word embeddings, e.g.
            ``factorized_embedding(teacher.get_input_embeddings().weight, D)``.

    Forward:
        ``forward(input_ids_a [B,La], attention_mask_a [B,La], input_ids_b [B,Lb]=None,
        attention_mask_b [B,Lb]=None) -> AdaBertOutput``. Un-mutated, it runs NNI's default
        (dry-run) architecture; after a one-shot strategy has mutated it, the supernet.
    """

    def __init__(self, config: StudentConfig, embedding_init: Optional[torch.Tensor] = None):
        super().__init__()
        if isinstance(config, Mapping):
            config = StudentConfig.from_dict(config)
        self.config = config
        d = config.embed_dim
        self.embed = Embedder(config)
        if embedding_init is not None:
            _load_embedding(self.embed, embedding_init)
        self.cells = nn.ModuleList([
            Cell(config.num_nodes, d, OrderedDict(
                (label, LayerChoice(OrderedDict((op, build_op(op, d)) for op in config.op_names), label=label))
                for label in config.edge_labels))
            for _ in range(config.k_max)
        ])
        self.probes = nn.ModuleList([nn.Linear(config.head_dim, config.num_labels) for _ in range(config.k_max)])
        self.depth = DepthChoice(config.k_max)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_dim, config.num_labels)

    def forward(self, input_ids_a: torch.Tensor, attention_mask_a: Optional[torch.Tensor] = None,
                input_ids_b: Optional[torch.Tensor] = None, attention_mask_b: Optional[torch.Tensor] = None
                ) -> AdaBertOutput:
        s0, m0, s1, m1 = _embed_inputs(self.embed, self.config, input_ids_a, attention_mask_a,
                                       input_ids_b, attention_mask_b)
        n_run = self.depth.cells_needed or self.config.k_max
        pooled, probe_logits = _run_cells(self.config, self.cells, self.probes, self.dropout, n_run,
                                          s0, m0, s1, m1)
        logits = self.classifier(self.dropout(self.depth(pooled)))
        depth_logits = ([self.classifier(self.dropout(p)) for p in pooled]
                        if self.depth.supervises_every_depth else [])
        return AdaBertOutput(logits, probe_logits, self.depth.depth_terms(n_run), depth_logits)

    def extra_oneshot_hooks(self, strategy: Any) -> list:
        """NNI protocol: mutation hooks this space adds for a one-shot strategy (NNI's DARTS,
        GumbelDARTS and Proxyless do not know :class:`DepthChoice`)."""
        # Imported here, not at the top: the supernet modules build on this declaration (nas imports
        # model), and NNI's one-shot strategy module, imported while `nni.nas.strategy` initialises,
        # would be a circular import inside NNI.
        from nni.nas.oneshot.pytorch.strategy import DARTS

        from ..nas.supermodules import DifferentiableDepthChoice
        return [DifferentiableDepthChoice.mutate] if isinstance(strategy, DARTS) else []

    def freeze(self, sample: Sample) -> "AdaBertStudent":
        """The child for ``sample`` as a plain :class:`AdaBertStudent`, with this space's weights.

        Works on the raw space and on a supernet mutated by a one-shot strategy (every
        edge module still indexes its candidates by op name). Only cells 1..K are kept.
        """
        arch = validate_arch({k: v for k, v in sample.items() if k in set(self.config.edge_labels) | {DEPTH_LABEL}}
                             if isinstance(sample, Mapping) else sample, self.config)
        student = AdaBertStudent(self.config, arch)
        student.embed.load_state_dict(self.embed.state_dict())
        for k in range(arch[DEPTH_LABEL]):
            src, dst = self.cells[k], student.cells[k]
            for label in self.config.edge_labels:
                dst.edges[label].load_state_dict(src.edges[label][arch[label]].state_dict())
            dst.attention.load_state_dict(src.attention.state_dict())
            student.probes[k].load_state_dict(self.probes[k].state_dict())
        student.classifier.load_state_dict(self.classifier.state_dict())
        ref = self.classifier.weight
        return student.to(device=ref.device, dtype=ref.dtype).train(self.training)


class AdaBertStudent(nn.Module):
    """A derived child: K cells of one fixed architecture. A plain ``nn.Module``.

    State-dict keys mirror the space minus the op name (``cells.0.edges.edge_2_0.conv.weight``),
    all tensors, so it saves to safetensors as is. Probes are kept (retraining distills
    through them); :func:`cost.child_params` reports the deployed size without them.

    Args:
        config: :class:`StudentConfig` (or its dict).
        arch: architecture dict, see :func:`validate_arch`.
    """

    def __init__(self, config: StudentConfig, arch: Mapping[str, Any]):
        super().__init__()
        if isinstance(config, Mapping):
            config = StudentConfig.from_dict(config)
        self.config = config
        self.arch = validate_arch(arch, config)
        self.depth: int = self.arch[DEPTH_LABEL]
        d = config.embed_dim
        self.embed = Embedder(config)
        self.cells = nn.ModuleList([
            Cell(config.num_nodes, d,
                 OrderedDict((label, build_op(self.arch[label], d)) for label in config.edge_labels))
            for _ in range(self.depth)
        ])
        self.probes = nn.ModuleList([nn.Linear(config.head_dim, config.num_labels) for _ in range(self.depth)])
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_dim, config.num_labels)

    @classmethod
    def from_pretrained(cls, directory) -> "AdaBertStudent":
        """The student saved in ``directory`` by :meth:`save_pretrained` (or exported by
        ``nni-adabert search`` / ``retrain``), in eval mode."""
        # model/pretrained.py (the file format) builds this class, so it is imported when called
        from .pretrained import from_pretrained
        return from_pretrained(directory)

    def save_pretrained(self, directory, tokenizer=None, info: Optional[Dict[str, Any]] = None) -> dict:
        """Write ``architecture.json``, ``student.safetensors`` and the ``tokenizer``'s files into
        ``directory`` (:func:`model.pretrained.save_pretrained`); returns the JSON document."""
        # imported when called, as in from_pretrained
        from .pretrained import save_pretrained
        return save_pretrained(self, directory, info, tokenizer)

    def load_embedding(self, embedding: torch.Tensor) -> None:
        """Copy ``[V, D]`` initial word embeddings (e.g. from :func:`factorized_embedding`)."""
        _load_embedding(self.embed, embedding)

    def forward(self, input_ids_a: torch.Tensor, attention_mask_a: Optional[torch.Tensor] = None,
                input_ids_b: Optional[torch.Tensor] = None, attention_mask_b: Optional[torch.Tensor] = None,
                return_probes: bool = True) -> AdaBertOutput:
        """Args as :meth:`AdaBertSpace.forward`; ``return_probes=False`` skips the probes (deployment)."""
        s0, m0, s1, m1 = _embed_inputs(self.embed, self.config, input_ids_a, attention_mask_a,
                                       input_ids_b, attention_mask_b)
        pooled, probe_logits = _run_cells(self.config, self.cells, self.probes, self.dropout, self.depth,
                                          s0, m0, s1, m1, with_probes=return_probes)
        logits = self.classifier(self.dropout(pooled[-1]))
        return AdaBertOutput(logits, probe_logits, [(self.depth, None)])


def _load_embedding(embed: Embedder, weight: torch.Tensor) -> None:
    expected = tuple(embed.word.weight.shape)
    if tuple(weight.shape) != expected:
        raise UserError(f"embedding init has shape {tuple(weight.shape)}, expected {expected} "
                        "(vocabulary size x embed_dim): is it from the same tokenizer?")
    with torch.no_grad():
        embed.word.weight.copy_(weight)
