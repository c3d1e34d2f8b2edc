"""The PoET workflow as jobs: MSA search, prompt sampling, scoring, single-site scans, generation.

Job types follow the OpenProtein legacy backend (``poet-api.md`` §3):

=================== ==================================================================
``/align/align``    MSA from a seed (homology search) or an uploaded MSA
``/align/prompt``   prompt sampled from an MSA (or uploaded); one prompt per replicate
``/poet``           score variant sequences: one log-likelihood per prompt replicate
``/poet/single_site`` every single substitution of a sequence (WT row ``X0X`` first)
``/poet/generate``  sample sequences from the prompt, each scored under every replicate
=================== ==================================================================

Artifacts (blobs in the job store): ``raw`` (the uploaded file, verbatim), ``msa.a3m`` (the MSA,
query first), ``prompt.json`` (``{"replicates": [[[name, seq], ...], ...], "random_seed": int}``),
``input.json`` (``[[name, seq], ...]`` variants) and ``result.json`` (rows
``{"name", "sequence", "score": [one float per replicate]}``; for single-site ``sequence`` is the
mutation code, 1-based, e.g. ``A1R``).

The work functions import the align service (:mod:`plmserve.align`) and the PoET engine
(:mod:`plmserve.models.poet`) lazily, so the job layer imports without them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from plmserve.bio.fasta import csv_rows, parse_fasta
from plmserve.errors import ConflictError, InvalidInputError, NotFoundError, PlmserveError
from plmserve.jobs.executor import Handler, JobContext, JobOutput
from plmserve.jobs.store import SUCCESS, JobRecord, JobStore

logger = logging.getLogger(__name__)

JOB_MSA = "/align/align"
JOB_PROMPT = "/align/prompt"
JOB_SCORE = "/poet"
JOB_SCORE_NEW = "/poet/score"
JOB_SINGLE_SITE = "/poet/single_site"
JOB_GENERATE = "/poet/generate"
POET_JOB_TYPES = frozenset({JOB_SCORE, JOB_SCORE_NEW, JOB_SINGLE_SITE, JOB_GENERATE})

ART_RAW = "raw"
ART_MSA = "msa.a3m"
ART_PROMPT = "prompt.json"
ART_INPUT = "input.json"
ART_RESULT = "result.json"

#: Letters accepted in a prompt/query sequence (PoET's tokenizer input; X/B/Z become the mask).
ACCEPTED_LETTERS = "ARNDCQEGHILKMFPSTWYVXOUBZ"
_ACCEPTED = frozenset(ACCEPTED_LETTERS)
#: Single-site substitution order (PoET id order), as the legacy backend emits it.
SINGLE_SITE_ORDER = "ARNDCQEGHILKMFPSTWYV"
WT_CODE = "X0X"
END_PROMPT = "<END_PROMPT>"


# ---------------------------------------------------------------------- input parsing
def check_sequence(seq: str, *, what: str, item: int | None = None) -> str:
    """Validate one ungapped protein sequence; returns it upper-cased.

    Raises:
        InvalidInputError: empty, or a character outside ``ARNDCQEGHILKMFPSTWYVXOUBZ``; the
            message names ``what``, the item (1-based row) and the 1-based position.
    """
    where = f"{what} {item}" if item is not None else what
    s = seq.strip().upper()
    if not s:
        raise InvalidInputError(f"{where}: empty sequence", item=item)
    for pos, ch in enumerate(s, start=1):
        if ch not in _ACCEPTED:
            hint = " (gaps are not allowed here)" if ch == "-" else ""
            raise InvalidInputError(
                f"{where}: invalid character {ch!r} at position {pos}{hint}; allowed: {ACCEPTED_LETTERS}",
                item=item, position=pos, character=ch,
            )
    return s


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{source}: not a text file (byte {exc.start} is not UTF-8)") from None
    return data.lstrip("\ufeff")


def parse_sequence_list(data: str | bytes, *, source: str = "file", default_name: str | None = "sequence-{i}",
                        allow_empty: bool = False) -> list[tuple[str | None, str]]:
    """Parse unaligned sequences from FASTA or headerless CSV (1 column ``sequence`` or 2 columns
    ``name,sequence``); the format is sniffed from the content (uploads have no useful file name).

    Args:
        default_name: format of names for unnamed rows, with ``{i}`` the 1-based row number;
            None leaves unnamed rows' names None (the caller assigns them).

    Returns:
        ``[(name, SEQUENCE)]`` in file order; sequences upper-cased and validated.

    Raises:
        InvalidInputError: not UTF-8, empty (unless ``allow_empty``), a CSV row with more than two
            fields, or an invalid residue (row and position named).
    """
    text = _decode(data, source)
    if not text.strip():
        if allow_empty:
            return []
        raise InvalidInputError(f"{source}: no sequences (the file is empty)")
    rows: list[tuple[str | None, str]] = []
    if text.lstrip().startswith(">"):
        for rec in parse_fasta(text, source=source):
            rows.append((rec.name, rec.sequence))
    else:
        for lineno, fields in enumerate(csv_rows(text, source), start=1):
            fields = [f.strip() for f in fields]
            if not fields or all(not f for f in fields):
                continue
            if len(fields) == 1:
                rows.append((None, fields[0]))
            elif len(fields) == 2:
                rows.append((fields[0] or None, fields[1]))
            else:
                raise InvalidInputError(
                    f"{source}: line {lineno}: expected 1 (sequence) or 2 (name,sequence) CSV fields, "
                    f"got {len(fields)}"
                )
    if not rows and not allow_empty:
        raise InvalidInputError(f"{source}: no sequences found")
    out: list[tuple[str | None, str]] = []
    for i, (name, seq) in enumerate(rows, start=1):
        if not name and default_name is not None:
            name = default_name.format(i=i)
        out.append((name, check_sequence(seq, what=f"{source}: row", item=i)))
    return out


def parse_prompt_file(data: str | bytes, *, source: str = "prompt_file") -> list[list[tuple[str, str]]]:
    """Parse an uploaded prompt (blocks separated by ``<END_PROMPT>`` lines, one per replicate)
    with :func:`plmserve.bio.prompt.parse_prompt`.

    Raises:
        InvalidInputError: no sequences, or an invalid block/sequence (named in the message).
    """
    from plmserve.bio.prompt import parse_prompt

    return [[(str(n), str(q)) for n, q in rep] for rep in parse_prompt(data, source=source)]


def score_names(n: int) -> list[str]:
    """Server-assigned names ``sequence-{i}``, 1-based, zero-padded to the digit width of ``n``
    (``sequence-01`` .. ``sequence-15``; spec §6.3)."""
    width = len(str(n))
    return [f"sequence-{i:0{width}d}" for i in range(1, n + 1)]


def single_site_codes(sequence: str) -> list[str]:
    """``[X0X] + [<wt><pos><mut>]``: every substitution in ``ARNDCQEGHILKMFPSTWYV`` order per
    1-based position, skipping the wild-type letter (19·L codes for a standard sequence)."""
    codes = [WT_CODE]
    for pos, wt in enumerate(sequence, start=1):
        codes.extend(f"{wt}{pos}{aa}" for aa in SINGLE_SITE_ORDER if aa != wt)
    return codes


# ---------------------------------------------------------------------- lineage
def load_prompt(store: JobStore, prompt_job_id: str) -> list[list[tuple[str, str]]]:
    """The replicates of a finished prompt job.

    Raises:
        ConflictError: the prompt job has not produced results yet (409).
        NotFoundError: no prompt stored.
    """
    data = store.get_artifact(prompt_job_id, ART_PROMPT)
    if data is None:
        status = store.status_of(prompt_job_id)
        if status is not None and status != SUCCESS:
            raise ConflictError(f"prompt job {prompt_job_id} has not produced results yet (status {status})")
        raise NotFoundError(f"job {prompt_job_id} has no prompt")
    obj = json.loads(data)
    return [[(str(n), str(s)) for n, s in rep] for rep in obj["replicates"]]


def load_msa(store: JobStore, msa_job_id: str):
    """The :class:`plmserve.bio.msa.MSA` of a finished MSA job (409 while it is not done)."""
    from plmserve.bio.msa import parse_msa

    data = store.get_artifact(msa_job_id, ART_MSA)
    if data is None:
        status = store.status_of(msa_job_id)
        if status is not None and status != SUCCESS:
            raise ConflictError(f"MSA job {msa_job_id} has not produced results yet (status {status})")
        raise NotFoundError(f"job {msa_job_id} has no MSA")
    return parse_msa(data, "a3m", source=f"MSA of job {msa_job_id}")


def prompt_json(replicates: Sequence[Sequence[tuple[str, str]]], random_seed: int | None = None) -> bytes:
    """Serialise prompt replicates for the ``prompt.json`` artifact."""
    return json.dumps({"replicates": [[list(p) for p in rep] for rep in replicates],
                       "random_seed": random_seed}).encode()


# ---------------------------------------------------------------------- work functions
@dataclass
class PoetResources:
    """What PoET/align/embedding work functions need: the settings, the (shared) model manager,
    the batching schedulers of the PoET engines (:mod:`plmserve.serving.poet_batching`) and
    the registry of the ESM-2 / ESM C schedulers (:meth:`model_scheduler`).

    ``app``: the FastAPI app whose job service this is; the ESM-2 / ESM C jobs then use the
    app's schedulers (``app.state.schedulers``, one per loaded model and process, shared with
    the HTTP routes). Without one (a notebook, a Ray job worker) the resources keep their own."""

    settings: Any
    models: Any
    schedulers: Any = field(default=None, repr=False)
    app: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.schedulers is None:
            from plmserve.serving.poet_batching import PoetSchedulers

            self.schedulers = PoetSchedulers(self.settings)
        self._own_registry = None
        if self.app is None:  # get_scheduler's registry holder: ``.state.settings``, ``.state.schedulers``
            from types import SimpleNamespace

            self._own_registry = SimpleNamespace(state=SimpleNamespace(settings=self.settings, schedulers={}))

    def model_scheduler(self, model: str, family: str, engine: Any):
        """The batching scheduler of the ESM-2 / ESM C ``engine`` of ``model`` (a slug or alias
        of ``family``), created on first use: the app's when there is one
        (:func:`plmserve.serving.scheduler.get_scheduler`), else this object's own."""
        from plmserve.models.registry import get_spec
        from plmserve.serving.scheduler import get_scheduler

        return get_scheduler(self.app or self._own_registry, get_spec(model, family).slug, engine)

    def batch_schedulers(self) -> dict[str, Any]:
        """``name -> ModelScheduler`` of the schedulers these resources own (the PoET ones and,
        without an app, the ESM ones): for readiness checks."""
        poet = getattr(self.schedulers, "items", None)
        out = {f"{slug} (jobs)": s for slug, s in (poet() if callable(poet) else [])}
        if self._own_registry is not None:
            out.update({f"{slug} (jobs)": s for slug, s in self._own_registry.state.schedulers.items()})
        return out

    def engine(self):
        """The PoET engine registered as ``poet``."""
        return self.models.get("poet", family="poet")

    def scheduler(self, engine: Any):
        """The batching scheduler of ``engine`` (one per loaded PoET model and process), or None
        for an engine without the prompt-cache API (a test double): call it directly then."""
        from plmserve.serving import poet_batching

        if not poet_batching.supports(engine):
            return None
        return self.schedulers.get(engine)

    def close(self) -> None:
        """Stop the schedulers (shut-down; the job workers have stopped already). The app's
        schedulers are stopped by the app's own shut-down hook."""
        self.schedulers.stop()
        if self._own_registry is not None:
            from plmserve.serving.scheduler import stop_schedulers

            stop_schedulers(self._own_registry)


def run_msa(ctx: JobContext) -> JobOutput:
    """``/align/align`` in seed mode: homology search of the seed against the configured database
    (``PLMSERVE_MSA_DATABASE``, backend ``PLMSERVE_MSA_BACKEND``), query row renamed ``seed``."""
    from plmserve import align

    res: PoetResources = ctx.resources
    settings = res.settings
    seed = ctx.args["seed"]
    database = ctx.args.get("database") or settings.msa_database
    if database is None:
        raise InvalidInputError(
            "no sequence database is configured for MSA search: set PLMSERVE_MSA_DATABASE to a "
            "FASTA file (or upload an MSA with is_seed=False)"
        )
    ctx.progress(0, 1, "searching homologs")

    def progress(stage: str, fraction: float) -> None:
        ctx.progress(fraction, 1.0, f"MSA search: {stage}")

    msa = align.create_msa(seed, database=Path(database), backend=settings.msa_backend,
                           cache_dir=Path(settings.data_dir) / "msa-cache", progress=progress,
                           query_name="seed")
    ctx.check_canceled()
    names = list(msa.names)
    names[0] = "seed"
    text = "".join(f">{n}\n{r}\n" for n, r in zip(names, msa.rows))
    return JobOutput({ART_MSA: text.encode()}, num_records=len(msa))


def run_prompt(ctx: JobContext) -> JobOutput:
    """``/align/prompt``: sample ``replicates`` prompts from the MSA job ``root_msa`` with
    :func:`plmserve.align.sample_prompt` (PoET's neighbour-weighted sampling; replicate *k*
    uses seed + k)."""
    from plmserve.align import sample_prompt

    a = ctx.args
    msa = load_msa(ctx.store, a["root_msa"])
    ctx.progress(0, 1, "sampling prompt")
    sampled = sample_prompt(
        msa,
        method=a["msa_method"],
        num_sequences=a.get("max_msa_sequences"),
        num_residues=a.get("max_msa_tokens"),
        homology_level=a["homology_level"],
        max_similarity=a["max_similarity"],
        min_similarity=a["min_similarity"],
        always_include_seed_sequence=a["force_include_first"],
        num_ensemble_prompts=a["replicates"],
        random_seed=a["seed"],
    )
    reps = [[(str(n), str(s)) for n, s in rep] for rep in sampled.replicates]
    if not any(reps):
        raise InvalidInputError("the prompt is empty: the similarity filters removed every MSA sequence")
    return JobOutput({ART_PROMPT: prompt_json(reps, getattr(sampled, "random_seed", a["seed"]))},
                     num_records=len(reps))


def _prompt_seqs(rep: Sequence[tuple[str, str]]) -> list[str]:
    return [s for _, s in rep]


def _ensemble(replicates: Sequence[Sequence[tuple[str, str]]]) -> list[list[str]]:
    """Replicates as the engine takes an ensemble: a list of prompts, each a list of sequences."""
    return [_prompt_seqs(rep) for rep in replicates]


def _per_replicate(value: Any, n: int) -> list[float]:
    """One float per replicate from an engine value (a scalar for one prompt, else an array)."""
    vals = _flat(value)
    if len(vals) != n:
        raise PlmserveError(f"the PoET engine returned {len(vals)} scores for {n} prompt replicates")
    return vals


def _flat(vals) -> list[float]:
    import numpy as np

    return np.asarray(vals, dtype=np.float64).reshape(-1).tolist()


def _reporter(ctx: JobContext, what: str) -> Callable[[int, int], None]:
    """An engine ``progress(done, total)`` callback that records progress and stops a canceled job."""

    def report(done: int, total: int) -> None:
        ctx.progress(done, total, f"{what}: {done}/{total}")

    return report


def job_principal(ctx: JobContext) -> str:
    """The fairness key of a job's work in the batching scheduler: ``owner/job id``.

    Batches go round-robin between principals, so every running job gets its turn each round:
    a 1-variant job waits at most one batch per other running job (at most ``PLMSERVE_WORKERS``
    jobs run at once, so no user gets more than that many turns). Per job rather than per user:
    within one principal the scheduler orders requests by attained service with aging (after
    30 s a long request's credit grows at the model's full rate), which could keep a user's own
    short job behind their long scans."""
    return f"{ctx.job.owner}/{ctx.job.job_id}"


def run_score(ctx: JobContext) -> JobOutput:
    """``/poet``: log p(variant | prompt) for every variant under every prompt replicate
    (:meth:`plmserve.models.poet.engine.PoET.score`, forward/backward averaged)."""
    res: PoetResources = ctx.resources
    replicates = load_prompt(ctx.store, ctx.args["prompt_id"])
    variants = json.loads(ctx.store.get_artifact(ctx.job.job_id, ART_INPUT) or b"[]")
    engine = res.engine()
    ctx.progress(0, 1, "scoring")
    sched = res.scheduler(engine)
    if sched is not None:  # through the model's batching scheduler, fair with every other job
        from plmserve.serving.poet_batching import score

        scores = score(sched, job_principal(ctx), _ensemble(replicates), [s for _, s in variants],
                       progress=_reporter(ctx, "scoring"))
    else:
        scores = engine.score(_ensemble(replicates), [s for _, s in variants], progress=_reporter(ctx, "scoring"))
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64).reshape(len(replicates), len(variants))
    rows = [{"name": n, "sequence": s, "score": scores[:, i].tolist()} for i, (n, s) in enumerate(variants)]
    return JobOutput({ART_RESULT: json.dumps(rows).encode()}, num_records=len(rows))


def run_single_site(ctx: JobContext) -> JobOutput:
    """``/poet/single_site``: the wild type (code ``X0X``) and every single substitution, each
    scored under every replicate (absolute log-likelihoods, not differences; spec §8), via
    :meth:`plmserve.models.poet.engine.PoET.single_site`."""
    res: PoetResources = ctx.resources
    replicates = load_prompt(ctx.store, ctx.args["prompt_id"])
    wt = ctx.args["variant"]
    codes = single_site_codes(wt)
    engine = res.engine()
    ctx.progress(0, 1, "single-site scan")
    sched = res.scheduler(engine)
    if sched is not None:  # through the model's batching scheduler, fair with every other job
        from plmserve.serving.poet_batching import single_site

        out = single_site(sched, job_principal(ctx), _ensemble(replicates), wt,
                          progress=_reporter(ctx, "single-site scan"))
    else:
        out = list(engine.single_site(_ensemble(replicates), wt, progress=_reporter(ctx, "single-site scan")))
    if len(out) != len(codes):
        raise PlmserveError(f"the PoET engine returned {len(out)} single-site rows, expected {len(codes)}")
    rows = []
    for i, ((code, value), expected) in enumerate(zip(out, codes)):
        if i > 0 and str(code) != expected:
            raise PlmserveError(f"the PoET engine returned single-site row {code!r} where {expected!r} was expected")
        rows.append({"name": None, "sequence": expected, "score": _per_replicate(value, len(replicates))})
    return JobOutput({ART_RESULT: json.dumps(rows).encode()}, num_records=len(rows))


def run_generate(ctx: JobContext) -> JobOutput:
    """``/poet/generate``: sample ``generate_n`` sequences conditioned on every replicate at once
    (PoET's ensemble sampler, :meth:`plmserve.models.poet.engine.PoET.generate`; the same seed
    and parameters give the same sequences), each with its log-likelihood under every replicate."""
    res: PoetResources = ctx.resources
    a = ctx.args
    replicates = load_prompt(ctx.store, a["prompt_id"])
    engine = res.engine()
    ctx.progress(0, 1, "generating")
    samples = engine.generate(_ensemble(replicates), int(a["generate_n"]), temperature=float(a["temperature"]),
                              top_k=a.get("topk"), top_p=a.get("topp"), max_length=int(a["maxlen"]),
                              seed=a.get("seed"), progress=_reporter(ctx, "generating"))
    rows = [{"name": f"generated-sequence-{i + 1}", "sequence": seq,
             "score": _per_replicate(ll, len(replicates))} for i, (seq, ll) in enumerate(samples)]
    return JobOutput({ART_RESULT: json.dumps(rows).encode()}, num_records=len(rows))


def handlers() -> dict[str, Handler]:
    """``job_type -> work function`` for every job type this module runs."""
    from plmserve.jobs.poet_v1 import handlers as v1_handlers

    return {
        JOB_MSA: run_msa,
        JOB_PROMPT: run_prompt,
        JOB_SCORE: run_score,
        JOB_SCORE_NEW: run_score,
        JOB_SINGLE_SITE: run_single_site,
        JOB_GENERATE: run_generate,
        **v1_handlers(),  # /poet/score/indel, /embeddings/embed, /embeddings/logits
    }


def read_result(store: JobStore, job: JobRecord) -> list[dict[str, Any]]:
    """The result rows of a finished PoET job.

    Raises:
        ConflictError: the job has not finished successfully (409, with its status/failure).
    """
    data = store.get_artifact(job.job_id, ART_RESULT)
    if data is None:
        if job.status == "CANCELED":
            raise ConflictError(f"job {job.job_id} was canceled; it has no results")
        if job.status == "FAILURE":
            raise ConflictError(f"job {job.job_id} failed: {job.failure_message}")
        raise ConflictError(f"job {job.job_id} has not produced results yet (status {job.status})")
    return json.loads(data)
