"""TinyBERT-style data augmentation (Jiao et al. 2020, Algorithm 1), the "+DA" of AdaBERT.

Each example gets ``copies`` augmented copies: by default (:func:`default_copies`) enough for
about 70,000 augmented rows, at least 4 and at most 20 per example (TinyBERT's 20), so a small
task gets more of them: MRPC (3,668 pairs) 20 copies, SST-2 (67,349 sentences) 4. In a copy, every replaceable word of
the text (whitespace-split; a word is replaceable when it has a letter or digit) is
replaced with probability ``replace_prob`` by one of ``top_k`` candidates, picked
uniformly:

- **masked-LM candidates** when the checkpoint has a masked-LM head and the word is a
  single WordPiece: the word is masked in the *original* sentence and the head's
  ``top_k`` predictions are the candidates;
- **word-embedding neighbours** otherwise (a multi-piece word, or no MLM head, as for
  the bundled all-MiniLM-L6-v2): the ``top_k`` nearest whole-word vocabulary entries
  to the word in the teacher's input word-embedding space (cosine; a multi-piece
  word is the mean of its pieces). This works offline for any BERT.

Candidates are always whole words of the vocabulary: no special tokens, no
``[unused*]``, no ``##`` continuation pieces, nothing without a letter or digit, and
never the word itself (nor one of its own pieces). With an uncased tokenizer the
candidate takes the word's capitalisation ("Good" -> "Great").

A copy that would equal the original or an earlier copy of the same example is
redrawn (a few times); only when that keeps failing (an example with almost nothing
to replace) is it dropped, so an example gets *at most* ``copies`` copies.

Pair tasks: each text of the pair is augmented independently; a copy is a pair.

Randomness: every example has its own generator, seeded by ``seed`` and the
example's text(s), so the copies of an example depend only on (model, config, text):
the same inputs and seed give identical copies, in any order or chunking.

Speed: candidates are computed once per distinct word (neighbours: one chunked
matrix multiply against the vocabulary) and once per (sentence, masked word) for
the MLM, in length-sorted batches; a few thousand sentences take seconds on CPU with
the embedding path.

Example::

    aug = Augmenter("bundled:all-MiniLM-L6-v2", config=AugmentConfig(copies=4, seed=0))
    aug.augment(["a gorgeous , witty , seductive movie ."])
    aug.augment_pairs(["He said so ."], ["She agreed ."])   # -> [[("He told so .", "She agreed ."), ...]]
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForMaskedLM

from ..errors import UserError
from ..training import pick_device
from .finetune import load_teacher_config, load_tokenizer, resolve_model

log = logging.getLogger(__name__)

CANDIDATE_SOURCES = ("auto", "mlm", "embedding")
# The default number of copies: about this many augmented rows, within [MIN_COPIES, MAX_COPIES] per
# example. MRPC's students gained with 20 copies over 4 (docs/results.md, the cause table); SST-2's
# were measured with 4, which more rows would slow without a measured gain.
AUGMENTED_ROWS = 70_000
MIN_COPIES, MAX_COPIES = 4, 20
MAX_TRIES = 10  # redraws of a copy that would repeat the original or an earlier copy


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the augmentation; ``to_dict()`` is what goes into a cache fingerprint.

    copies:       augmented copies per example (0 = no augmentation; ``None``: :func:`default_copies`
                  of the train set's size, resolved by :meth:`for_examples` before anything is built).
    replace_prob: probability p_t that a replaceable word is replaced.
    top_k:        number of candidates K per word.
    seed:         random seed (a non-negative integer).
    candidates:   "auto" (MLM head if the checkpoint has one, else embedding
                  neighbours), "mlm" (require an MLM head) or "embedding".
    """

    copies: Optional[int] = None
    replace_prob: float = 0.4
    top_k: int = 15
    seed: int = 0
    candidates: str = "auto"

    def __post_init__(self):
        def is_int(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if self.copies is not None and (not is_int(self.copies) or self.copies < 0):
            raise UserError(f"AugmentConfig.copies must be an integer >= 0, got {self.copies!r}")
        p = self.replace_prob
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p <= 1.0:
            raise UserError(f"AugmentConfig.replace_prob must be a number in [0, 1], got {p!r}")
        if not is_int(self.top_k) or self.top_k < 1:
            raise UserError(f"AugmentConfig.top_k must be an integer >= 1, got {self.top_k!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise UserError(f"AugmentConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.candidates not in CANDIDATE_SOURCES:
            raise UserError(f"AugmentConfig.candidates must be one of {', '.join(CANDIDATE_SOURCES)}, "
                            f"got {self.candidates!r}")

    def for_examples(self, num_examples: int) -> "AugmentConfig":
        """This config with :attr:`copies` resolved for a train set of ``num_examples`` (``None``:
        :func:`default_copies`); a number already set is kept."""
        return self if self.copies is not None else replace(self, copies=default_copies(num_examples))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["replace_prob"] = float(d["replace_prob"])
        return d


def default_copies(num_examples: int) -> int:
    """Augmented copies per example for a train set of ``num_examples``: enough for about
    :data:`AUGMENTED_ROWS` rows, from :data:`MIN_COPIES` to :data:`MAX_COPIES`.

    >>> default_copies(3668), default_copies(5444), default_copies(67349)   # MRPC, TREC, SST-2
    (20, 13, 4)
    """
    return min(MAX_COPIES, max(MIN_COPIES, math.ceil(AUGMENTED_ROWS / max(int(num_examples), 1))))


def has_mlm_architecture(config) -> bool:
    """Whether ``config.architectures`` names a model with a masked-LM head."""
    return any("ForMaskedLM" in a or "ForPreTraining" in a for a in (config.architectures or []))


def _load_mlm(path: str):
    """``(model, None)`` if the checkpoint's MLM head loads completely, else ``(None, reason)``."""
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError) as exc:
        return None, str(exc).splitlines()[0]
    prefix = model.base_model_prefix + "."
    # Keys of the head (outside the base encoder) that had to be newly initialised.
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if missing:
        return None, f"its masked-LM head is not in the checkpoint (missing {', '.join(missing[:3])})"
    return model, None


class Augmenter:
    """Augments texts or text pairs with one checkpoint's vocabulary (see the module doc).

    model_dir_or_name: checkpoint directory or hub name (``"bundled:all-MiniLM-L6-v2"`` or
        ``None`` for the offline default teacher).
    tokenizer: a tokenizer object or path; default: the checkpoint's own.
    device: torch device; default ``cuda`` when available, else ``cpu``.
    progress: show tqdm progress bars.
    batch_size: sentences per masked-LM forward pass.
    """

    def __init__(self, model_dir_or_name=None, tokenizer=None, config: AugmentConfig | None = None,
                 device=None, progress: bool = True, batch_size: int = 64):
        self.config = config if config is not None else AugmentConfig(copies=MIN_COPIES)
        if not isinstance(self.config, AugmentConfig):
            raise UserError(f"config must be an AugmentConfig, got {type(self.config).__name__}")
        if self.config.copies is None:  # the default depends on the whole train set, which a call may not be
            raise UserError("Augmenter: AugmentConfig.copies is None; resolve it for the train set first "
                            "(AugmentConfig.for_examples)")
        self.device = torch.device(device or pick_device())
        self.progress = progress
        self.batch_size = batch_size
        path = resolve_model(model_dir_or_name)
        model_config = load_teacher_config(path)  # UserError if it is not a BERT-family checkpoint
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(path if tokenizer is None else tokenizer)
        self.tokenizer = tokenizer

        # Which candidate source: detect the MLM head by the architectures in config.json,
        # then confirm by loading it and checking no head weight was newly initialised.
        self.mlm = None
        want = self.config.candidates
        if want == "mlm" or (want == "auto" and has_mlm_architecture(model_config)):
            self.mlm, reason = _load_mlm(path)
            if self.mlm is None:
                if want == "mlm":
                    raise UserError(f"AugmentConfig.candidates='mlm' but {path} has no usable masked-LM "
                                    f"head: {reason}")
                log.warning("augmentation: %s; using word-embedding neighbours instead", reason)
        self.method = "mlm" if self.mlm is not None else "embedding"
        if self.mlm is not None:
            self.mlm.to(self.device).eval()
            emb = self.mlm.get_input_embeddings().weight
        else:
            emb = AutoModel.from_pretrained(path).get_input_embeddings().weight
        self.embeddings = emb.detach().to(self.device, torch.float32)
        self.max_length = min(int(getattr(model_config, "max_position_embeddings", 512) or 512),
                              int(getattr(tokenizer, "model_max_length", 512) or 512), 512)

        # The candidate vocabulary: whole words with a letter or digit.
        vocab_size = self.embeddings.shape[0]
        tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        special = set(tokenizer.all_special_ids)
        self.id_to_token = tokens
        valid = [i for i, tok in enumerate(tokens)
                 if tok is not None and i not in special and not tok.startswith("##")
                 and not re.fullmatch(r"\[unused\d+\]", tok) and any(c.isalnum() for c in tok)]
        self.valid_ids = torch.tensor(valid, dtype=torch.long, device=self.device)
        self.valid_mask = torch.zeros(vocab_size, dtype=torch.bool, device=self.device)
        self.valid_mask[self.valid_ids] = True
        self.unk_id = tokenizer.unk_token_id
        # An uncased tokenizer: candidates are lower case, so give them the word's capitalisation.
        self.lowercases = tokenizer.tokenize("Hello") == tokenizer.tokenize("hello")

    def to_dict(self) -> dict:
        """The settings that determine the output, with ``candidates`` resolved."""
        return {**self.config.to_dict(), "candidates": self.method}

    # ------------------------------------------------------------------ public API

    def augment(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, up to ``config.copies`` augmented copies."""
        texts = _check_texts(texts, "texts")
        return [[c[0] for c in copies] for copies in self._augment([(t,) for t in texts])]

    def augment_pairs(self, a: Sequence[str], b: Sequence[str]) -> list[list[tuple[str, str]]]:
        """For each pair ``(a[i], b[i])``, up to ``config.copies`` augmented pairs; the two texts
        are augmented independently."""
        a, b = _check_texts(a, "a"), _check_texts(b, "b")
        if len(a) != len(b):
            raise UserError(f"augment_pairs: a and b must have the same length, got {len(a)} and {len(b)}")
        return self._augment(list(zip(a, b)))

    # ------------------------------------------------------------------ implementation

    def _augment(self, examples: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
        cfg = self.config
        if cfg.copies == 0 or not examples:
            return [[] for _ in examples]
        words = [[t.split() for t in ex] for ex in examples]
        distinct = sorted({w for ex in words for text in ex for w in text})
        pieces = dict(zip(distinct, self.tokenizer(distinct, add_special_tokens=False)["input_ids"]))

        def replaceable(w):
            p = pieces[w]
            return any(c.isalnum() for c in w) and bool(p) and any(i != self.unk_id for i in p)

        # 1. Which words each copy replaces (Algorithm 1: each word with probability p_t).
        selections, mlm_pos = [], set()  # selections[i][c]: [(text, word)], mlm_pos: {(i, text, word)}
        for i, (ex, ex_words) in enumerate(zip(examples, words)):
            rng = _rng(cfg.seed, 0, ex)
            slots = [(t, j) for t, text in enumerate(ex_words) for j, w in enumerate(text) if replaceable(w)]
            per_copy = []
            for _ in range(cfg.copies if slots else 0):
                for _ in range(MAX_TRIES):  # a copy that replaces nothing is redrawn ...
                    chosen = [s for s, u in zip(slots, rng.random(len(slots))) if u < cfg.replace_prob]
                    if chosen or cfg.replace_prob == 0:
                        break
                else:  # ... and after that replaces one word, chosen uniformly
                    chosen = [slots[rng.integers(len(slots))]]
                per_copy.append(chosen)
                if self.mlm is not None:
                    mlm_pos.update((i, t, j) for t, j in chosen if len(pieces[ex_words[t][j]]) == 1)
            selections.append(per_copy)

        # 2. Candidates: the MLM's predictions for masked single-piece words, embedding
        #    neighbours for every other selected word.
        mlm_cands = self._mlm_candidates(words, mlm_pos) if mlm_pos else {}
        need = {tuple(pieces[words[i][t][j]]) for i, per_copy in enumerate(selections)
                for chosen in per_copy for t, j in chosen if (i, t, j) not in mlm_cands}
        neighbours = self._neighbours(sorted(need))

        # 3. Assemble the copies; redraw a copy that repeats the original or an earlier copy.
        out = []
        for i, (ex, ex_words, per_copy) in enumerate(zip(examples, words, selections)):
            rng = _rng(cfg.seed, 1, ex)
            seen = {tuple(" ".join(text) for text in ex_words)}
            copies = []
            for chosen in per_copy:
                cands = [mlm_cands.get((i, t, j)) or neighbours[tuple(pieces[ex_words[t][j]])]
                         for t, j in chosen]
                for _ in range(MAX_TRIES):
                    new = [list(text) for text in ex_words]
                    for (t, j), cs in zip(chosen, cands):
                        if cs:
                            new[t][j] = self._match_case(cs[rng.integers(len(cs))], ex_words[t][j])
                    copy = tuple(" ".join(text) for text in new)
                    if copy not in seen:
                        seen.add(copy)
                        copies.append(copy)
                        break
            out.append(copies)
        return out

    def _match_case(self, cand: str, word: str) -> str:
        if not self.lowercases:
            return cand
        if len(word) > 1 and word.isupper():
            return cand.upper()
        if word[:1].isupper():
            return cand[:1].upper() + cand[1:]
        return cand

    @torch.inference_mode()
    def _neighbours(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[str]]:
        """The ``top_k`` nearest candidate words (cosine) to each word, given by its piece ids."""
        if not keys:
            return {}
        k = self.config.top_k
        extra = 8  # over-fetch, to drop candidates equal to the word up to case
        vocab = F.normalize(self.embeddings[self.valid_ids], dim=-1)  # [Nv, H]
        column = torch.full((self.embeddings.shape[0],), -1, dtype=torch.long, device=self.device)
        column[self.valid_ids] = torch.arange(len(self.valid_ids), device=self.device)
        out = {}
        chunk = 1024
        for start in tqdm(range(0, len(keys), chunk), desc="augment: neighbours", unit="chunk",
                          disable=not self.progress):
            batch = keys[start:start + chunk]
            width = max(len(p) for p in batch)
            ids = torch.tensor([list(p) + [-1] * (width - len(p)) for p in batch], device=self.device)
            present = ids >= 0
            vecs = self.embeddings[ids.clamp(min=0)] * present.unsqueeze(-1)
            query = F.normalize(vecs.sum(1) / present.sum(1, keepdim=True), dim=-1)
            scores = query @ vocab.T  # [B, Nv]
            # Never the word itself, nor one of its own pieces.
            own = column[ids.clamp(min=0)].masked_fill(~present, -1)
            rows = torch.arange(len(batch), device=self.device).unsqueeze(1).expand_as(own)
            keep = own >= 0
            scores[rows[keep], own[keep]] = -float("inf")
            top = self.valid_ids[scores.topk(min(k + extra, vocab.shape[0]), dim=-1).indices].tolist()
            for p, cand_ids in zip(batch, top):
                word = "".join(self.id_to_token[i].removeprefix("##") for i in p).lower()
                cands = [self.id_to_token[c] for c in cand_ids]
                out[p] = [c for c in cands if c.lower() != word][:k]
        return out

    @torch.inference_mode()
    def _mlm_candidates(self, words, positions) -> dict[tuple[int, int, int], list[str]]:
        """MLM top-k for each (example, text, word): that word masked in the original text.
        A word cut off by the model's maximum length gets no entry (it falls back to neighbours)."""
        texts = sorted({(i, t) for i, t, _ in positions})
        enc = self.tokenizer([words[i][t] for i, t in texts], is_split_into_words=True,
                             truncation=True, max_length=self.max_length)
        first_token = {}
        for n, key in enumerate(texts):
            for pos, w in enumerate(enc.word_ids(n)):
                if w is not None:
                    first_token.setdefault((*key, w), (n, pos))
        items = [(key, *first_token[key]) for key in sorted(positions) if key in first_token]
        items.sort(key=lambda it: len(enc["input_ids"][it[1]]))  # similar lengths batch together
        model, k = self.mlm, self.config.top_k
        pad, mask = self.tokenizer.pad_token_id or 0, self.tokenizer.mask_token_id
        fast_head = hasattr(model, "cls") and hasattr(model, model.base_model_prefix)
        out = {}
        for start in tqdm(range(0, len(items), self.batch_size), desc="augment: masked LM", unit="batch",
                          disable=not self.progress):
            batch = items[start:start + self.batch_size]
            seqs = [enc["input_ids"][n] for _, n, _ in batch]
            width = max(map(len, seqs))
            input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            rows = torch.arange(len(batch), device=self.device)
            cols = torch.tensor([pos for _, _, pos in batch], device=self.device)
            original = input_ids[rows, cols].clone()
            input_ids[rows, cols] = mask
            if fast_head:  # run the head on the masked positions only
                hidden = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
                logits = model.cls(hidden[rows, cols])
            else:
                logits = model(input_ids=input_ids, attention_mask=attention).logits[rows, cols]
            logits = logits[:, :len(self.valid_mask)].float()
            logits[:, ~self.valid_mask[:logits.shape[1]]] = -float("inf")
            logits[rows, original] = -float("inf")
            top = logits.topk(min(k, len(self.valid_ids)), dim=-1).indices.tolist()
            for (key, _, _), cand_ids in zip(batch, top):
                out[key] = [self.id_to_token[c] for c in cand_ids]
        return out


def _rng(seed: int, stream: int, texts: tuple[str, ...]) -> np.random.Generator:
    """A generator for one example, from the seed and the example's own text(s)."""
    digest = hashlib.blake2b("\x1f".join(texts).encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng([seed, stream, len(texts), *np.frombuffer(digest, dtype=np.uint32).tolist()])


def _check_texts(texts, name: str) -> list[str]:
    if isinstance(texts, str):
        raise UserError(f"{name} must be a list of strings, not a single string")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"{name}[{bad}] must be a string, got {type(texts[bad]).__name__}")
    return texts
