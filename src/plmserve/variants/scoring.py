"""Zero-shot variant-effect scores, one scorer per model family, each following the convention
ProteinGym uses for that model (``shared/specs/proteingym-evaluation.md`` §7). Every score is
"higher = fitter" and relative to the wild type (the wild type scores 0).

* **ESM-2 / ESM C** (:func:`score_masked_marginals`): additive single-site masked marginals,
  ``Σ_{(wt,p,mt)} [log P_p(mt) − log P_p(wt)]`` where ``log P_p`` comes from the forward pass
  with position ``p`` alone masked on the wild-type background (§7.1; ESM-1v, Meier et al. 2021).
  Multi-mutants are the sum of their single-site terms (the other mutated sites are neither masked
  nor mutated). Works with any engine that has ESM2Engine's ``score_mutants``.
* **ESM3** (:func:`score_esm3_masked_marginals`): the same sum on the sequence track, one pass per
  distinct mutated position with that sequence token masked, the other tracks at their defaults
  (the sequence-only path of ProteinGym's evoscale script, §7.2); windows of 1022 residues for
  longer proteins.
* **PoET** (:func:`score_poet`): the log-likelihood of the variant minus that of the wild type,
  each the mean of the forward and the backward (reversed) score, averaged over prompt replicates:
  the prompts of a prompt file, or the ``scripts/score.py`` ensemble sampled from an MSA (a grid of
  prompt size x maximum similarity to the query, seed 188257, §7.3). ProteinGym's ``PoET_score`` is
  absolute; subtracting the wild type changes no metric (§3 invariance) and makes the numbers
  comparable with the other models'.

:func:`score_variants` picks the scorer from the registry family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from plmserve.errors import InvalidInputError, InvalidParameterError

from .io import VariantSet

Progress = Callable[[int, int], None]

MASKED_MARGINAL_FAMILIES = ("esm2", "esmc")
"""Registry families scored with :func:`score_masked_marginals` (engines with ``score_mutants``)."""

ESM3_WINDOW = 1022


@dataclass
class VariantScores:
    """Scores of a :class:`VariantSet`.

    Attributes:
        scores: float64 ``[n]``, higher = fitter, relative to the wild type.
        method: ``masked_marginals`` | ``poet_ensemble``.
        replicates: float64 ``[n_replicates, n]`` per-replicate relative scores (PoET), or None.
        replicate_names: column names of the replicates (``score_1`` ...).
        settings: everything needed to reproduce the numbers (for the sidecar JSON).
    """

    scores: np.ndarray
    method: str
    replicates: np.ndarray | None = None
    replicate_names: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _require_substitutions(variants: VariantSet, model: str) -> None:
    for i, subs in enumerate(variants.substitutions):
        if subs is None:
            raise InvalidInputError(
                f"{variants.source}: variant '{variants.mutants[i]}' (row {i + 1}) is not a substitution variant of "
                f"the wild type (length {len(variants.sequences[i])} vs {len(variants.wild_type)}); {model} scores "
                "substitutions only (PoET scores any sequence)", item=i)  # fmt: skip


def _sum_single_sites(variants: VariantSet, table: dict[tuple[int, str], float]) -> np.ndarray:
    return np.array([sum(table[(s.position, s.mt)] for s in subs) for subs in variants.substitutions],  # type: ignore[union-attr]
                    dtype=np.float64)  # fmt: skip


def _unique_sites(variants: VariantSet) -> list[tuple[int, str, str]]:
    """Distinct ``(position, wt, mt)`` over all variants, sorted by position."""
    sites = {(s.position, s.wt, s.mt) for subs in variants.substitutions for s in (subs or [])}
    return sorted(sites)


# ---------------------------------------------------------------------------------------------
# ESM-2 / ESM C
# ---------------------------------------------------------------------------------------------
def score_masked_marginals(engine: Any, variants: VariantSet, *, batch: int = 512,
                           progress: Progress | None = None) -> VariantScores:
    """Additive single-site masked marginals with an ESM-2-like engine (module docstring).

    Proteins longer than the engine's ``max_residues`` (1022 for ESM-2) are scored in windows
    of that many residues around each position (start = max(0, p − half), moved left at the C
    terminus), each window encoded with its own BOS/EOS as ProteinGym's ESM3/ESM C path does.
    (ProteinGym's ESM-2 script slices the token array instead, so its interior windows carry no
    BOS/EOS; that cannot be expressed through ``score_mutants``.)

    Args:
        engine: an object with ``score_mutants(wild_type, codes, method="masked_marginals")``
            returning float64 ``[len(codes)]`` (:class:`plmserve.models.esm2.ESM2Engine`, the ESM C
            engine); called with single substitutions only, so each term masks one position.
        variants: substitution variants (the wild type row scores 0).
        batch: single substitutions per engine call (progress granularity).

    Returns:
        :class:`VariantScores` (``method="masked_marginals"``).

    Raises:
        InvalidInputError: a variant that is not a substitution variant, or one the engine rejects.
    """
    _require_substitutions(variants, getattr(engine, "slug", "this model"))
    sites = _unique_sites(variants)
    wild_type = variants.wild_type
    limit = int(getattr(engine, "max_residues", 1022) or 1022)
    groups: dict[tuple[int, int], list[tuple[int, str, str]]] = {}
    for site in sites:
        groups.setdefault(residue_window(len(wild_type), site[0] - 1, limit), []).append(site)
    table: dict[tuple[int, str], float] = {}
    done = 0
    for (start, end), group in groups.items():
        window = wild_type[start:end]
        for b in range(0, len(group), batch):
            part = group[b:b + batch]
            codes = [f"{w}{pos - start}{mt}" for pos, w, mt in part]
            values = np.asarray(engine.score_mutants(window, codes, method="masked_marginals"), dtype=np.float64)
            for (pos, _, mt), value in zip(part, values):
                table[(pos, mt)] = float(value)
            done += len(part)
            if progress:
                progress(done, len(sites))
    return VariantScores(
        scores=_sum_single_sites(variants, table),
        method="masked_marginals",
        settings={"convention": "sum over substitutions of log p(mt) - log p(wt), each position masked alone on "
                                "the wild-type background (ProteinGym masked-marginals)",
                  "single_site_terms": len(sites),
                  "windows": [[s, e] for s, e in groups] if len(wild_type) > limit else None},
    )


# ---------------------------------------------------------------------------------------------
# ESM3
# ---------------------------------------------------------------------------------------------
def residue_window(length: int, index: int, window: int = ESM3_WINDOW) -> tuple[int, int]:
    """``[start, end)`` residue window around 0-based ``index`` (ProteinGym evoscale: start =
    max(0, p − 511), end = min(L, start + 1022), moved left at the C-terminal end)."""
    if length <= window:
        return 0, length
    start = max(0, index - window // 2)
    end = min(length, start + window)
    return max(0, end - window), end


def score_esm3_masked_marginals(model: Any, variants: VariantSet, *, batch: int = 8,
                                progress: Progress | None = None) -> VariantScores:
    """ESM3 masked marginals on the sequence track (module docstring; spec §7.2, sequence only).

    Args:
        model: :class:`plmserve.models.esm3.ESM3` (``forward(sequence_tokens=[B, N]) ->`` an output
            with ``sequence_logits`` ``[B, N, 64]``).
        variants: substitution variants; letters must be in the ESM3 sequence vocabulary.
        batch: masked copies per forward pass.

    Returns:
        :class:`VariantScores` (``method="masked_marginals"``).

    Raises:
        InvalidInputError: not a substitution variant, or a letter outside the vocabulary.
    """
    import torch

    from plmserve.models.esm3 import constants as C
    from plmserve.models.esm3.sampler import run_trunk

    _require_substitutions(variants, "ESM3")
    wt = variants.wild_type
    ids = []
    for i, ch in enumerate(wt):
        tok = C.SEQUENCE_CHAR_TO_ID.get(ch)
        if tok is None:
            raise InvalidInputError(f"wild type: invalid character '{ch}' at position {i + 1}", position=i + 1,
                                    character=ch)
        ids.append(tok)
    sites = _unique_sites(variants)
    for pos, _, mt in sites:
        if mt not in C.SEQUENCE_CHAR_TO_ID:
            raise InvalidInputError(f"mutation to '{mt}' at position {pos}: not an ESM3 sequence token", character=mt)
    positions = sorted({pos for pos, _, _ in sites})
    L = len(wt)
    # one masked forward pass per distinct position; group positions that share a window
    groups: dict[tuple[int, int], list[int]] = {}
    for pos in positions:
        groups.setdefault(residue_window(L, pos - 1), []).append(pos)
    logp: dict[int, np.ndarray] = {}
    done = 0
    for (start, end), poss in groups.items():
        base = torch.tensor([C.SEQUENCE_BOS_TOKEN] + ids[start:end] + [C.SEQUENCE_EOS_TOKEN], dtype=torch.long)
        for b in range(0, len(poss), batch):
            chunk = poss[b:b + batch]
            toks = base.repeat(len(chunk), 1)
            for r, pos in enumerate(chunk):
                toks[r, pos - start] = C.SEQUENCE_MASK_TOKEN  # BOS offset +1, 1-based -1
            out = run_trunk(model, {"sequence_tokens": toks}, tracks=["sequence"])
            lp = torch.log_softmax(out.sequence_logits.float(), dim=-1)
            for r, pos in enumerate(chunk):
                logp[pos] = lp[r, pos - start].double().cpu().numpy()
            done += len(chunk)
            if progress:
                progress(done, len(positions))
    table = {(pos, mt): float(logp[pos][C.SEQUENCE_CHAR_TO_ID[mt]] - logp[pos][C.SEQUENCE_CHAR_TO_ID[w]])
             for pos, w, mt in sites}  # fmt: skip
    return VariantScores(
        scores=_sum_single_sites(variants, table),
        method="masked_marginals",
        settings={"convention": "sum over substitutions of log p(mt) - log p(wt) on the sequence track, each "
                                "position masked alone, other tracks at their defaults (ProteinGym ESM3/ESM C, "
                                "sequence only)",
                  "forward_passes": len(positions), "window": ESM3_WINDOW},
    )


# ---------------------------------------------------------------------------------------------
# PoET
# ---------------------------------------------------------------------------------------------
def score_poet(model: Any, variants: VariantSet, *, prompts: list[list[Any]] | None = None, msa: Any = None,
               grid: Sequence[tuple[int, float]] | None = None, seed: int | None = None, reverse: bool = True,
               progress: Progress | None = None) -> VariantScores:
    """PoET: log-likelihood of each variant minus the wild type's, averaged over prompts.

    Args:
        model: :class:`plmserve.models.poet.PoET`.
        variants: any sequences (indels too); the wild type is scored alongside.
        prompts: prompt replicates (each a list of sequences), e.g. from a prompt file; or
        msa: a :class:`plmserve.bio.msa.MSA` (row 0 = the query): the ``score.py`` ensemble over
            ``grid`` (default the official 15 points) with ``seed`` (default 188257).
        reverse: average the forward and the backward score (the official recipe).
        progress: ``progress(done, total)``.

    Returns:
        :class:`VariantScores` with ``method="poet_ensemble"``, ``replicates`` ``[n_prompts, n]``
        (per prompt, relative to the wild type under that prompt) and, in ``settings``, the wild
        type's absolute log-likelihood per prompt.

    Raises:
        InvalidParameterError: neither or both of ``prompts`` and ``msa``; ``reverse=False`` with
            an MSA. InvalidInputError: a bad character (names the sequence).
    """
    if (prompts is None) == (msa is None):
        raise InvalidParameterError("PoET needs exactly one of a prompt (--prompt) or an MSA (--msa)")
    unique = list(dict.fromkeys([variants.wild_type, *variants.sequences]))
    index = {s: i for i, s in enumerate(unique)}
    settings: dict[str, Any] = {"reverse": reverse,
                                "convention": "log-likelihood(variant) - log-likelihood(wild type), mean of forward "
                                              "and backward, averaged over prompts (PoET scripts/score.py)"}
    if msa is not None:
        from plmserve.models.poet.ensemble import SCORE_PY_GRID, SCORE_PY_SEED, score_py_ensemble

        if not reverse:
            raise InvalidParameterError("the score.py ensemble always averages forward and backward")
        points = list(grid) if grid else list(SCORE_PY_GRID)
        seed = SCORE_PY_SEED if seed is None else seed
        result = score_py_ensemble(model, msa, unique, grid=points, seed=seed, progress=progress)
        absolute = np.stack([c.average for c in result.per_config])  # [P, U]
        settings.update(prompt_source="msa", grid=[[t, s] for t, s in points], seed=seed,
                        prompt_sizes=[{"max_tokens": c.max_tokens, "max_similarity": c.max_similarity,
                                       "sequences": len(c.prompt_rows), "tokens": c.prompt_num_tokens}
                                      for c in result.per_config])  # fmt: skip
    else:
        assert prompts is not None
        if not prompts:
            raise InvalidParameterError("the prompt has no replicates")
        absolute = np.atleast_2d(model.score([list(p) for p in prompts], unique, reverse=reverse, progress=progress))
        settings.update(prompt_source="prompt", prompt_sizes=[
            {"sequences": len(p), "tokens": sum(len(s[1] if isinstance(s, tuple) else s) + 2 for s in p)}
            for p in prompts])  # fmt: skip
    wt_ll = absolute[:, 0]
    rel = absolute - wt_ll[:, None]
    per_variant = rel[:, [index[s] for s in variants.sequences]]  # [P, n]
    settings["wild_type_log_likelihood"] = [float(x) for x in wt_ll]
    return VariantScores(
        scores=per_variant.mean(axis=0),
        method="poet_ensemble",
        replicates=per_variant,
        replicate_names=[f"score_{i + 1}" for i in range(per_variant.shape[0])],
        settings=settings,
    )


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def score_variants(model: Any, family: str, variants: VariantSet, *, prompts: list[list[Any]] | None = None,
                   msa: Any = None, grid: Sequence[tuple[int, float]] | None = None, seed: int | None = None,
                   reverse: bool = True, progress: Progress | None = None) -> VariantScores:
    """Score ``variants`` with the convention of ``family`` (a registry family: ``esm2``,
    ``esmc``, ``esm3``, ``poet``; any other family whose engine has ``score_mutants`` gets
    masked marginals).

    Raises:
        InvalidParameterError: a prompt/MSA given to a model that does not use one, PoET without
            one, or a family with no scorer.
    """
    if family == "poet":
        return score_poet(model, variants, prompts=prompts, msa=msa, grid=grid, seed=seed, reverse=reverse,
                          progress=progress)  # fmt: skip
    if prompts is not None or msa is not None:
        raise InvalidParameterError(f"--prompt/--msa are for PoET; a {family} model scores from the wild type alone")
    if family == "esm3":
        return score_esm3_masked_marginals(model, variants, progress=progress)
    if family in MASKED_MARGINAL_FAMILIES or hasattr(model, "score_mutants"):
        return score_masked_marginals(model, variants, progress=progress)
    raise InvalidParameterError(f"no variant scorer for model family '{family}'")
