"""Job types of the current OpenProtein API (``openprotein-v1-api.md`` §3.3, §7) beyond the
0.2.x ones in :mod:`plmserve.jobs.poet`.

=========================== ===================================================================
``/poet/score``             (shared with :mod:`plmserve.jobs.poet`) score variants
``/poet/score/indel``       every insertion/deletion of a base sequence, scored like ``/poet/score``
``/embeddings/embed``       PoET per-residue embeddings, or their MEAN/SUM over residues
``/embeddings/logits``      PoET next-token logits of every residue (ESM-2, ESM C: masked-LM logits)
``/embeddings/attn``        ESM-2 attention maps of the last layer
=========================== ===================================================================

Artifacts: ``input.json`` (``[[name, sequence], ...]``, as for scoring) and ``result.npz``
(``numpy.savez``; array ``"{i}"`` belongs to the i-th input sequence, 0-based).

Array conventions (PoET-1, hidden size D, vocabulary V = 24 in PoET's token order): for a
sequence of L residues the decoder reads ``*SEQ`` (start token + residues) after the prompt;

- logits ``[L, V]``: row i is the distribution over residue i+1 given the prompt and residues
  1..i (the start token's row predicts residue 1; the stop-token row is left out);
- embeddings ``[L, D]``: the final (LayerNorm-ed) hidden state at each residue position, i.e.
  the input of the output head; ``reduction`` MEAN/SUM reduces over the L rows to ``[D]``.

With N > 1 prompt replicates every array gains a leading replicate axis (``[N, L, D]``,
``[N, D]``, ``[N, L, V]``). Only the forward direction is used (as the official PoET embeds).
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Sequence

import numpy as np

from plmserve.errors import InvalidParameterError
from plmserve.jobs.executor import Handler, JobContext, JobOutput
from plmserve.jobs.poet import ART_INPUT, JOB_SCORE_NEW, load_prompt, run_score

JOB_SCORE_INDEL = "/poet/score/indel"
JOB_EMBED = "/embeddings/embed"
JOB_LOGITS = "/embeddings/logits"
JOB_ATTN = "/embeddings/attn"
ART_ARRAYS = "result.npz"
REDUCTIONS = ("MEAN", "SUM")
V1_SCORE_TYPES = frozenset({JOB_SCORE_NEW, JOB_SCORE_INDEL})
ARRAY_JOB_TYPES = frozenset({JOB_EMBED, JOB_LOGITS, JOB_ATTN})


def indel_variants(base: str, insert: str | None = None, delete: Sequence[int] | None = None) -> list[tuple[str, str]]:
    """Every insertion of ``insert`` and every deletion of each size in ``delete`` along ``base``.

    Returns ``[(name, sequence)]``: the base sequence first (``WT``), then insertions before each
    1-based position i = 1..L+1 (``{i}ins{FRAGMENT}``; L+1 appends), then for each deletion size
    d (in the given order) the deletions of residues i..i+d-1 (``{i}del`` for d = 1, else
    ``{i}_{i+d-1}del``). Duplicated sequences are kept (each site is a variant).

    Raises:
        InvalidParameterError: neither ``insert`` nor ``delete``; a size < 1 or >= len(base).
    """
    if not insert and not delete:
        raise InvalidParameterError("score/indel needs 'insert' (a fragment) and/or 'delete' (fragment sizes)")
    out = [("WT", base)]
    L = len(base)
    if insert:
        for i in range(1, L + 2):
            out.append((f"{i}ins{insert}", base[: i - 1] + insert + base[i - 1:]))
    for d in delete or []:
        if not isinstance(d, int) or d < 1 or d >= L:
            raise InvalidParameterError(
                f"delete: fragment size {d!r} must be between 1 and {L - 1} (the base has {L} residues)")
        for i in range(1, L - d + 2):
            name = f"{i}del" if d == 1 else f"{i}_{i + d - 1}del"
            out.append((name, base[: i - 1] + base[i - 1 + d:]))
    return out


def poet_arrays(engine: Any, prompts: Sequence[Sequence[str]], sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-residue logits ``[N, L, V]`` and final hidden states ``[N, L, D]`` (float32) of
    ``sequence`` under each of the N prompts (see the module docstring for the conventions).

    Uses the network of a :class:`plmserve.models.poet.engine.PoET` directly: the prompt's
    whole-context K/V (:meth:`PoET.embed`), then one decoder pass over ``*SEQ``
    (:func:`plmserve.serving.poet_batching.decode_arrays`, which reads the hidden states with a
    forward hook that ignores other threads' passes)."""
    from plmserve.serving.poet_batching import decode_arrays

    logits_out, hidden_out = [], []
    for prompt in prompts:
        logits, hidden = decode_arrays(engine, engine.embed(list(prompt)), sequence)
        logits_out.append(logits)
        hidden_out.append(hidden)
    return np.stack(logits_out), np.stack(hidden_out)


def esm_arrays(engine: Any, sequences: Sequence[str], kind: str, reduction: str | None,
               family: str = "esm2", *, scheduler: Any = None, principal: str = "jobs",
               check: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """ESM-2 or ESM C arrays of the last layer, one per sequence (float32; BOS/EOS excluded):

    - ``logits`` ``[L, 20]``: ``engine.encode(include=["logits"])`` (columns
      ``engine.alphabet_tokens``), the same call for both families;
    - ``embed`` ``[L, D]`` per residue, or their MEAN/SUM ``[D]``: the output of the final
      LayerNorm, the tensor the language-model head reads. ESM-2: fair-esm's last-layer
      representation (``encode(include=["per_token"], repr_layers=[-1])``, which has
      ``emb_layer_norm_after`` applied). ESM C: the official ``ESMC`` ``embeddings`` output
      (:meth:`plmserve.models.esmc.engine.ESMCEngine.forward_tokens`), not the pre-norm block
      output that ``encode`` returns for BioLM;
    - ``attn`` ``[H, L, L]`` (ESM-2 only): the last layer's attention weights between residues
      (BOS/EOS rows and columns dropped; rows do not sum to 1 then).

    With ``scheduler`` (the model's :class:`~plmserve.serving.scheduler.ModelScheduler`) the
    ``logits`` and ``embed`` passes go through it (:meth:`ModelScheduler.run_sync`, one unit per
    sequence, the methods ``encode`` / ``forward_tokens`` registered for ``family``), batched
    with the other jobs' and HTTP requests' units of the same computation under ``principal``;
    ``check(done, total)`` is called as sequences complete and whatever it raises (a canceled
    job) drops the queued units and is re-raised. The engine computes the same batched call
    either way, so the arrays equal the direct ones up to float32 summation order. ``attn``
    always runs directly (one unpadded pass per sequence with a hook on the attention maps).

    Raises:
        InvalidParameterError: ``attn`` for ESM C (``family="esmc"``; it has no attention output).
        InvalidInputError: a bad sequence (before anything is queued).
    """
    esmc = family == "esmc"

    def compute(method: str, items: list[Any], params: dict) -> list[Any]:
        if scheduler is None:
            return getattr(engine, method)(items, **params)
        from plmserve.serving.scheduler import get_method

        bm = get_method(family, method)
        units = bm.expand(engine, items, params)
        return scheduler.run_sync(principal, [(method, bm, units, params)], check=check)[0]

    if kind == "logits":
        out = compute("encode", list(sequences), {"include": ["logits"], "repr_layers": [-1]})
        return [np.asarray(o["logits"], dtype=np.float32) for o in out]
    if kind == "attn":
        if esmc:
            raise InvalidParameterError(f"model '{engine.slug}' (ESM C) does not provide attention maps")
        from plmserve.models.esm2.engine import attention_maps

        arrays = []
        for seq in sequences:  # one at a time: the maps of one unpadded sequence
            with attention_maps() as maps:
                engine.encode([seq], include=["attentions"])
            last = maps[-1][0]  # [H, T, T] of the last layer, T = L + 2 (BOS, EOS)
            arrays.append(last[:, 1:-1, 1:-1].float().cpu().numpy())
        return arrays
    if esmc:
        from plmserve.models.esmc.alphabet import tokenize

        seqs = engine.validate(list(sequences))
        out = compute("forward_tokens", [tokenize(s) for s in seqs], {"logits": False, "embeddings": True})
        per_residue = [np.asarray(o["embeddings"][1:-1], dtype=np.float32) for o in out]
    else:
        out = compute("encode", list(sequences), {"include": ["per_token"], "repr_layers": [-1]})
        per_residue = [np.asarray(next(iter(o["representations"].values())), dtype=np.float32) for o in out]
    if reduction == "MEAN":
        return [a.mean(axis=0) for a in per_residue]
    if reduction == "SUM":
        return [a.sum(axis=0) for a in per_residue]
    return per_residue


def _run_arrays(ctx: JobContext, kind: str) -> JobOutput:
    res = ctx.resources
    if ctx.args.get("family") in ("esm2", "esmc"):
        rows = json.loads(ctx.store.get_artifact(ctx.job.job_id, ART_INPUT) or b"[]")
        family = ctx.args["family"]
        ctx.progress(0, 1, f"{kind} ({ctx.args['model']})")
        from plmserve.errors import ServiceUnavailableError
        from plmserve.jobs.poet import job_principal

        def check(done: int, total: int) -> None:
            ctx.progress(done, total, f"{kind} ({ctx.args['model']}): {done}/{total}")

        # logits / embed through the model's batching scheduler (shared with the HTTP routes when
        # the job service belongs to an app); attn, and resources without schedulers: directly
        model_scheduler = getattr(res, "model_scheduler", None)
        for attempt in range(3):
            engine = res.models.get(ctx.args["model"], family=family)
            sched = model_scheduler(ctx.args["model"], family, engine) if model_scheduler and kind != "attn" else None
            try:
                arrays = esm_arrays(engine, [s for _, s in rows], kind, ctx.args.get("reduction"), family,
                                    scheduler=sched, principal=job_principal(ctx), check=check)
                break
            except ServiceUnavailableError:
                # the model was evicted (its scheduler stopped) meanwhile: reload it and go on
                if sched is None or sched.alive() or attempt == 2:
                    raise
                ctx.check_canceled()
        buf = io.BytesIO()
        np.savez(buf, **{str(i): a for i, a in enumerate(arrays)})
        return JobOutput({ART_ARRAYS: buf.getvalue()}, num_records=len(rows))
    replicates = load_prompt(ctx.store, ctx.args["prompt_id"])
    prompts = [[s for _, s in rep] for rep in replicates]
    rows = json.loads(ctx.store.get_artifact(ctx.job.job_id, ART_INPUT) or b"[]")
    engine = res.engine()
    reduction = ctx.args.get("reduction")
    arrays: dict[str, np.ndarray] = {}
    ctx.progress(0, len(rows), f"{kind}: 0/{len(rows)}")
    sched = res.scheduler(engine) if hasattr(res, "scheduler") else None
    if sched is not None:  # through the PoET model's batching scheduler (one prompt embedding per replicate)
        from plmserve.jobs.poet import job_principal
        from plmserve.serving.poet_batching import arrays as scheduled_arrays

        def report(done: int, total: int) -> None:
            ctx.progress(done, total, f"{kind}: {done}/{total}")

        computed = scheduled_arrays(sched, job_principal(ctx), prompts, [s for _, s in rows], progress=report)
    else:
        computed = None
    for i, (_, seq) in enumerate(rows):
        logits, hidden = computed[i] if computed is not None else poet_arrays(engine, prompts, seq)
        if kind == "logits":
            arr = logits
        elif reduction == "MEAN":
            arr = hidden.mean(axis=1)
        elif reduction == "SUM":
            arr = hidden.sum(axis=1)
        else:
            arr = hidden
        arrays[str(i)] = arr[0] if arr.shape[0] == 1 else arr
        if computed is None:
            ctx.progress(i + 1, len(rows), f"{kind}: {i + 1}/{len(rows)}")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return JobOutput({ART_ARRAYS: buf.getvalue()}, num_records=len(rows))


def run_embed(ctx: JobContext) -> JobOutput:
    """``/embeddings/embed``: PoET embeddings of every input sequence (see module docstring)."""
    return _run_arrays(ctx, "embed")


def run_logits(ctx: JobContext) -> JobOutput:
    """``/embeddings/logits``: PoET logits of every input sequence (see module docstring)."""
    return _run_arrays(ctx, "logits")


def load_arrays(data: bytes) -> dict[int, np.ndarray]:
    """The arrays of a ``result.npz`` artifact by input index."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {int(k): z[k] for k in z.files}


def npy_bytes(arr: np.ndarray) -> bytes:
    """One array as the bytes of a ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def run_attn(ctx: JobContext) -> JobOutput:
    """``/embeddings/attn``: ESM-2 attention maps of every input sequence."""
    return _run_arrays(ctx, "attn")


def handlers() -> dict[str, Handler]:
    """``job_type -> work function`` for the v1-only job types."""
    return {JOB_SCORE_INDEL: run_score, JOB_EMBED: run_embed, JOB_LOGITS: run_logits, JOB_ATTN: run_attn}
