"""Sequence decoders: from cranio-caudally ordered instances and their class probabilities to VerSe labels.

Input: `probs` (N, K), row i = class probabilities of instance i (instance 0 most superior), columns = protocol
classes 1..K. Output: one VerSe label per instance, anatomically ordered and without duplicates.

- `paper` (section 2.6): take each instance's most probable class; for a duplicated label keep the most confident
  instance and renumber the others by their spatial offset from it; then walk superior to inferior and shift or
  fill so that every label follows its predecessor (a skipped level is filled, a repeated or reversed one is
  shifted). The most superior instance therefore anchors the sequence.
- `dp` (default): the most probable labelling in which consecutive instances carry consecutive levels, i.e.
  argmax over label paths of sum_i log p_i(label_i); a Viterbi pass over the chain of levels (equivalent to
  trying every start label when the chain has no optional levels). With `allow_t13`/`allow_l6` the chain may
  pass through T13 (between T12 and L1) or end with L6 (after L5); entering one costs `log(transitional_prior)`.
  When the protocol has no class for a transitional level (C1-L5 training merges L6 into L5 and T13 into T12),
  its evidence is the probability of the level it was merged into. Given instance centroids, `dp` is gap-aware:
  it may skip one level between two instances whose distance is much larger than the neighbouring steps. Instances
  before the first and after the last level may be "not a vertebra" (label 0: skull base, sacrum, fragments), and
  so may an instance between two levels (a fragment, or a split piece of one vertebra) at an extra cost
  `fragment_prior` (`FRAGMENT_PRIOR`; 0: ends only): without that, one piece too many in mid-spine either shifts
  every label after it or ends the spine there. Given instance volumes too, `dp` is split-aware: a piece cut off a
  vertebra (a short step, or much smaller than its neighbours) may keep that vertebra's level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import expit

from vertseg.labels import L6, T13, Protocol, anatomical_rank

DecoderName = Literal["dp", "paper"]
_EPS = 1e-6
NONE_PRIOR = 0.1  # an instance called "not a vertebra" pays log(0.1): only clear background evidence wins
_NONE_FLOOR = 1e-12  # without background evidence "not a vertebra" costs about two wrong levels: only when forced
FRAGMENT_PRIOR = 0.05  # "not a vertebra" between two levels also pays log(0.05): a mid-spine vertebra keeps its level


@dataclass(frozen=True)
class LabelChain:
    """The levels a decoder may emit, in anatomical order, with the protocol class that scores each level."""

    states: tuple[int, ...]
    optional: frozenset[int]
    score_class: tuple[int, ...]

    @classmethod
    def build(cls, protocol: Protocol, allow_l6: bool = False, allow_t13: bool = False) -> "LabelChain":
        labels = set(protocol.verse_labels)
        optional = set()
        for flag, level, merged_into in ((allow_t13, T13, 19), (allow_l6, L6, 24)):
            if level in labels or (flag and merged_into in labels):
                labels.add(level)
                optional.add(level)
        states = tuple(sorted(labels, key=anatomical_rank))
        merged = {T13: 19, L6: 24}
        score_class = tuple(
            protocol.class_of(s) if s in protocol.verse_labels else protocol.class_of(merged[s]) for s in states
        )
        return cls(states=states, optional=frozenset(optional), score_class=score_class)

    def transitions(self, transitional_prior: float, skip: int = 0) -> np.ndarray:
        """(S, S) log weights of moving from level a (row) to the next instance's level b (column), passing over
        `skip` missing non-transitional levels in between."""
        n = len(self.states)
        log_t = np.full((n, n), -np.inf)
        for a in range(n):
            b, passed = a + 1, 0
            while b < n:
                core = self.states[b] not in self.optional
                if passed == skip:
                    log_t[a, b] = 0.0 if core else np.log(transitional_prior)
                if core:
                    if passed == skip:
                        break
                    passed += 1
                b += 1
        return log_t


@dataclass(frozen=True)
class Decoded:
    """VerSe label per instance (0 where no consistent level exists) and the probability of that level."""

    labels: np.ndarray
    confidence: np.ndarray


def _check_probs(probs: np.ndarray, protocol: Protocol) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != protocol.num_classes:
        raise ValueError(
            f"class probabilities must be (N, {protocol.num_classes}) for protocol {protocol.name}, got {probs.shape}"
        )
    if np.any(~np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("class probabilities must be finite and non-negative")
    return probs


def viterbi(emit: np.ndarray, log_t: np.ndarray) -> tuple[np.ndarray, float]:
    """Best state path for emission log-scores (N, S) under transition log weights (S, S) or per step (N-1, S, S)."""
    n, s = emit.shape
    delta = emit[0].copy()
    back = np.zeros((n, s), dtype=np.int64)
    for i in range(1, n):
        candidates = delta[:, None] + (log_t if log_t.ndim == 2 else log_t[i - 1])
        back[i] = np.argmax(candidates, axis=0)
        delta = candidates[back[i], np.arange(s)] + emit[i]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmax(delta))
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path, float(delta[path[-1]])


def _step_ratios(centroids_mm: np.ndarray) -> np.ndarray:
    """(N-1,) each step between consecutive instances over the median of up to two steps on either side."""
    steps = np.linalg.norm(np.diff(np.asarray(centroids_mm, dtype=np.float64), axis=0), axis=1)
    ratio = np.ones_like(steps)
    for i in range(steps.size if steps.size >= 2 else 0):
        others = np.r_[steps[max(0, i - 2):i], steps[i + 1:i + 3]]
        ratio[i] = steps[i] / max(float(np.median(others)), 1e-6)
    return ratio


def gap_probabilities(centroids_mm: np.ndarray) -> np.ndarray:
    """(N-1,) probability that a level is missing between consecutive instances, from how much longer the step is
    than the neighbouring steps (vertebral height changes slowly along the spine; a missed vertebra about doubles
    the step). A steep logistic in the ratio: 0.5 at 1.6x, about 1e-4 at 1x."""
    ratio = _step_ratios(centroids_mm)
    if ratio.size < 2:
        return np.full(ratio.size, 0.01)
    return np.clip(1.0 / (1.0 + np.exp(-15.0 * (ratio - 1.6))), 1e-4, 1 - 1e-4)


def split_probabilities(centroids_mm: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    """(N-1,) probability that two consecutive instances are pieces of one vertebra. Two cues, the stronger wins:
    their step is much shorter than the neighbouring steps (a piece cut off a body sits a third of a step from it,
    a vertebra cut by the field of view still about three quarters: 0.5 at 0.5x, 1e-4 at 1x), or one of them, not
    at an end of the spine, is much smaller than its neighbours (a lamina or a half body the split cut off holds
    15-30 % of a vertebra: 0.5 at 40 %, about 0.05 at 55 %). End instances are exempt from the size cue: a
    vertebra cut by the field of view is small and still a level."""
    ratio = _step_ratios(centroids_mm)
    if ratio.size < 2:
        return np.full(ratio.size, 1e-4)
    by_step = expit(-15.0 * (ratio - 0.5))
    volumes = np.asarray(volumes, dtype=np.float64)
    share = np.ones_like(volumes)
    for i in range(1, volumes.size - 1):
        others = np.r_[volumes[max(0, i - 2):i], volumes[i + 1:i + 3]]
        share[i] = volumes[i] / max(float(np.median(others)), 1e-9)
    small = expit(-15.0 * (share - 0.4))  # no overflow for a huge share
    by_size = np.maximum(small[:-1], small[1:])
    return np.clip(np.maximum(by_step, by_size), 1e-4, 1 - 1e-4)


def decode_dp(probs: np.ndarray, protocol: Protocol, allow_l6: bool = False, allow_t13: bool = False,
              transitional_prior: float = 0.1, centroids_mm: np.ndarray | None = None,
              background: np.ndarray | None = None, none_prior: float = NONE_PRIOR,
              fragment_prior: float = FRAGMENT_PRIOR, gaps: bool = True, volumes: np.ndarray | None = None
              ) -> Decoded:
    """Most probable consecutive labelling (see module docstring), with a "not a vertebra" state before the first
    and after the last labelled instance: skull base, sacrum, fragments, or more instances than levels get label 0
    instead of pushing the whole sequence one level; between two levels the state pays `fragment_prior` more.
    `background` (N,): each instance's probability of not being a vertebra (the identification background
    channel); the state's emission is log(background * none_prior), so it is chosen only when the evidence clearly
    favours it (without a background channel, only when there are more instances than levels).

    With `centroids_mm` (N, 3) the chain may also skip one level between two instances (a vertebra the
    segmentation missed), weighted by `gap_probabilities` (`gaps`, gap-aware decoding), and, given the
    instances' `volumes` (N,), keep one level over two consecutive instances, weighted by `split_probabilities`:
    a piece the split cut off a vertebra then joins it instead of taking the next level and shifting every label
    after it (split-aware decoding)."""
    probs = _check_probs(probs, protocol)
    n = probs.shape[0]
    if n == 0:
        return Decoded(np.zeros(0, dtype=np.int64), np.zeros(0))
    chain = LabelChain.build(protocol, allow_l6, allow_t13)
    emit_p = probs[:, np.asarray(chain.score_class) - 1]
    none = np.zeros(n) if background is None else np.clip(np.asarray(background, dtype=np.float64), 0.0, 1.0)
    none_emit = np.log(np.maximum(none * none_prior, _NONE_FLOOR))[:, None]
    levels = len(chain.states)
    emit = np.concatenate([none_emit, np.log(emit_p + _EPS), np.repeat(none_emit, levels, axis=1), none_emit], axis=1)
    log_t = _with_none_states(chain.transitions(transitional_prior), fragment_prior)
    if centroids_mm is not None and n > 1:
        if np.shape(centroids_mm) != (n, 3):
            raise ValueError(f"centroids_mm must be ({n}, 3), got {np.shape(centroids_mm)}")
        if gaps:
            gap = gap_probabilities(centroids_mm)[:, None, None]
            skip = _with_none_states(chain.transitions(transitional_prior, skip=1), fragment_prior)
            log_t = np.logaddexp(log_t[None] + np.log1p(-gap), skip[None] + np.log(gap))
        if volumes is not None:
            emit, log_t = _with_joined_states(emit, log_t, split_probabilities(centroids_mm, volumes), levels)
    path, _ = viterbi(emit, log_t)
    first_copy = 2 * levels + 2  # joined copies follow the levels, fragments and the two end states
    path = np.where(path >= first_copy, path - first_copy + 1, path)
    on_spine = (path > 0) & (path <= levels)
    labels = np.zeros(n, dtype=np.int64)
    confidence = np.zeros(n)
    rows = np.flatnonzero(on_spine)
    labels[rows] = np.asarray(chain.states)[path[rows] - 1]
    confidence[rows] = emit_p[rows, path[rows] - 1]
    return Decoded(labels, confidence)


def _with_joined_states(emit: np.ndarray, log_t: np.ndarray, split: np.ndarray, levels: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Add a "joined" copy of each level: an instance in it is a piece of the previous instance's vertebra (same
    level, entered with the step's `split` probability, every other move pays 1 - split) and leaves as that level
    would. A joined state cannot be joined again, so a small piece joins one neighbour, never bridges two whole
    vertebrae into one level."""
    n_states = log_t.shape[-1]
    moves = np.broadcast_to(log_t, (split.size, n_states, n_states)) + np.log1p(-split)[:, None, None]
    out = np.full((split.size, n_states + levels, n_states + levels), -np.inf)
    out[:, :n_states, :n_states] = moves
    level, copy = np.arange(1, levels + 1), n_states + np.arange(levels)
    out[:, level, copy] = np.log(split)[:, None]
    out[:, copy, :n_states] = moves[:, level, :]
    return np.concatenate([emit, emit[:, level]], axis=1), out


def _with_none_states(log_t: np.ndarray, fragment_prior: float) -> np.ndarray:
    """Level transitions (S, S) -> (2S + 2, 2S + 2) with non-vertebra states: "above" (first) stays or enters any
    level; "after level a" (S states following the levels) is entered from level a or itself at `fragment_prior`
    and leaves as level a would; any level may end the spine in "below" (last), which stays."""
    s = log_t.shape[0]
    levels, fragments = slice(1, s + 1), slice(s + 1, 2 * s + 1)
    out = np.full((2 * s + 2, 2 * s + 2), -np.inf)
    out[levels, levels] = log_t
    out[fragments, levels] = log_t
    index = np.arange(s)
    entry = np.log(fragment_prior) if fragment_prior > 0 else -np.inf
    out[1 + index, s + 1 + index] = entry
    out[s + 1 + index, s + 1 + index] = entry
    out[0, :s + 1] = 0.0
    out[1:s + 1, -1] = 0.0
    out[-1, -1] = 0.0
    return out


def decode_paper(probs: np.ndarray, protocol: Protocol, allow_l6: bool = False, allow_t13: bool = False) -> Decoded:
    """Section 2.6 rules (see module docstring), on the chain of non-transitional levels; a sequence running past
    the last level is shifted up (or ends in L6 when allowed)."""
    probs = _check_probs(probs, protocol)
    n = probs.shape[0]
    if n == 0:
        return Decoded(np.zeros(0, dtype=np.int64), np.zeros(0))
    chain = LabelChain.build(protocol, allow_l6, allow_t13)
    core = [s for s in chain.states if s not in chain.optional]
    # A transitional prediction counts as the level it extends (T13 -> T12, L6 -> L5).
    core_index = {s: core.index(s) for s in core} | {T13: core.index(19), L6: core.index(24)}
    raw = np.array([core_index[protocol.verse_of(int(c) + 1)] for c in np.argmax(probs, axis=1)])
    conf = probs.max(axis=1)
    position = raw.copy()
    for level in np.unique(raw):
        members = np.flatnonzero(raw == level)
        if members.size > 1:
            keep = members[np.argmax(conf[members])]
            position[members] = level + (members - keep)
    # Superior to inferior, each level follows its predecessor: the top instance anchors the sequence.
    position = max(int(position[0]), 0) + np.arange(n)
    labels_core = np.asarray(core)
    overflow = int(position[-1]) - (len(core) - 1)
    extra_l6 = allow_l6 and L6 in chain.states and overflow >= 1
    if extra_l6:
        overflow -= 1
    if overflow > 0:
        position -= overflow
    labels = np.where(position >= 0, labels_core[np.clip(position, 0, len(core) - 1)], 0)
    if extra_l6:
        labels[-1] = L6
    state_index = {s: k for k, s in enumerate(chain.states)}
    score_col = np.array([chain.score_class[state_index[int(lab)]] - 1 if lab else 0 for lab in labels])
    confidence = np.where(labels > 0, probs[np.arange(n), score_col], 0.0)
    return Decoded(labels.astype(np.int64), confidence)


def decode(name: DecoderName, probs: np.ndarray, protocol: Protocol, allow_l6: bool = False,
           allow_t13: bool = False, centroids_mm: np.ndarray | None = None,
           background: np.ndarray | None = None, fragment_prior: float = FRAGMENT_PRIOR, gaps: bool = True,
           volumes: np.ndarray | None = None) -> Decoded:
    """Dispatch by decoder name (`InferenceConfig.decoder`); `centroids_mm` makes `dp` gap-aware (`gaps`) and, with
    `volumes`, split-aware; `background` gives it the evidence for its "not a vertebra" states."""
    if name == "dp":
        return decode_dp(probs, protocol, allow_l6, allow_t13, centroids_mm=centroids_mm, background=background,
                         fragment_prior=fragment_prior, gaps=gaps, volumes=volumes)
    if name == "paper":
        return decode_paper(probs, protocol, allow_l6, allow_t13)
    raise ValueError(f"unknown sequence decoder {name!r}; choose 'dp' or 'paper'")
