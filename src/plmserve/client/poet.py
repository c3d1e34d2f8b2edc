"""``session.poet``: the OpenProtein SDK 0.2 ``PoetAPI`` against a plmserve server.

Same methods, futures and client-side checks as ``openprotein.api.poet`` 0.2 (the seed;
``poet-api.md`` §4-5)::

    session = plmserve.client.connect("http://127.0.0.1:8000", "alice", "secret-pw")
    msa = session.poet.create_msa(b"MSIQHFRVALIPFFAAFCLPVFA...")
    prompt = msa.sample_prompt(num_ensemble_prompts=3, random_seed=42)
    scores = session.poet.score(prompt, [b"MSIQ...", b"MSIA..."]).wait()   # List[PoetScoreResult]
    ssp = session.poet.single_site(prompt, b"MSIQ...").wait()              # WT row first (b"WT")
    gen = session.poet.generate(prompt, num_samples=5, seed=7).wait()

Differences from SDK 0.2: the wild-type row of a single-site result is ``b"WT"``, the name
plmserve uses everywhere (CLI, SDK, reports; SDK 0.2 shows ``b"input"`` for the server's
``X0X``); and errors raise instead of printing or returning partial data: HTTP errors raise
:class:`APIError` (also 400s), failed jobs raise :class:`JobFailedException`, and
``PoetGenerateFuture.stream`` raises on malformed rows.
"""

from __future__ import annotations

import csv
import io
import random
from enum import Enum
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Union

from pydantic import BaseModel, field_validator

from plmserve.bio.mutations import WILD_TYPE_CODE
from plmserve.client.base import APISession
from plmserve.client.errors import (
    APIError,
    InvalidJob,
    InvalidParameterError,
    MissingParameterError,
)
from plmserve.client.jobs import AsyncJobFuture, Job, JobStatus, StreamingAsyncJobFuture, job_args_get, job_get

POET_PAGE_SIZE = 50000
POET_MAX_PAGE_SIZE = 50000
PREFIX = "v1/poet/align"


class MSASamplingMethod(str, Enum):
    """How ``sample_prompt`` draws sequences from the MSA (``poet-api.md`` §5)."""

    RANDOM = "RANDOM"
    NEIGHBORS = "NEIGHBORS"
    NEIGHBORS_NO_LIMIT = "NEIGHBORS_NO_LIMIT"
    NEIGHBORS_NONGAP_NORM_NO_LIMIT = "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
    TOP = "TOP"


class PoetInputType(str, Enum):
    """What ``get_input`` fetches: the seed/upload, the MSA, or the prompt."""

    INPUT = "RAW"
    MSA = "GENERATED"
    PROMPT = "PROMPT"


class PoetScoreResult(BaseModel):
    """One scored sequence: ``score`` has one natural-log likelihood per prompt replicate."""

    sequence: bytes
    score: List[float]
    name: Optional[str] = None


class PoetSSPResult(PoetScoreResult):
    """One single-site row: ``sequence`` is the mutation code (``b"A1R"``); the wild-type row
    (``X0X`` on the OpenProtein wire) is ``b"WT"``
    (:data:`plmserve.bio.mutations.WILD_TYPE_CODE`, the name used by every plmserve output)."""

    @field_validator("sequence", mode="before")
    @classmethod
    def _rename_wt(cls, value):
        if "X0X" in (value.decode() if isinstance(value, bytes) else str(value)):
            return WILD_TYPE_CODE.encode()
        return value


def _as_bytes(x: Union[bytes, str]) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


def _read_file(f: Union[bytes, str, Path, BinaryIO]) -> bytes:
    if isinstance(f, bytes):
        return f
    if isinstance(f, Path):
        return f.read_bytes()
    if isinstance(f, str):
        p = Path(f)
        if "\n" not in f and p.is_file():
            return p.read_bytes()
        return f.encode()
    data = f.read()
    return data.encode() if isinstance(data, str) else data


def _csv_reader(session: APISession, job_id: str, input_type: PoetInputType,
                prompt_index: Optional[int] = None) -> "csv._reader":
    params: dict = {"job_id": job_id, "msa_type": input_type.value}
    if prompt_index is not None:
        params["replicate"] = prompt_index
    text = session.get(f"{PREFIX}/inputs", params=params).text
    return csv.reader(io.StringIO(text))


def get_input(session: APISession, job: Union[Job, str], input_type: PoetInputType,
              prompt_index: Optional[int] = None):
    """CSV reader of ``[name, sequence]`` rows of a job's lineage input (any job of the lineage)."""
    job_id = job if isinstance(job, str) else job.job_id
    return _csv_reader(session, job_id, input_type, prompt_index)


class PoetFutureMixin:
    """Inputs of a job's lineage: seed, MSA, prompt (works from any PoET/align job)."""

    session: APISession
    job: Job

    def get_input(self, input_type: PoetInputType):
        return get_input(self.session, self.job, input_type)

    def get_prompt(self, prompt_index: Optional[int] = None):
        """CSV reader of the prompt; ``prompt_index`` is the 1-based replicate (None: all,
        separated by ``<END_PROMPT>`` rows)."""
        return get_input(self.session, self.job, PoetInputType.PROMPT, prompt_index)

    def get_seed(self):
        """CSV reader of the seed (``[["seed", SEQ]]``) or the uploaded MSA."""
        return get_input(self.session, self.job, PoetInputType.INPUT)

    def get_msa(self):
        """CSV reader of the MSA: query first, match columns, ``-`` gaps."""
        return get_input(self.session, self.job, PoetInputType.MSA)

    @property
    def id(self) -> str:
        return self.job.job_id


def _check_prompt_params(num_sequences, num_residues, homology_level, max_similarity, min_similarity):
    for name, value in (("homology_level", homology_level), ("max_similarity", max_similarity),
                        ("min_similarity", min_similarity)):
        if not 0 <= value <= 1:
            raise InvalidParameterError(f"The '{name}' must be between 0 and 1.")
    if num_sequences is None and num_residues is None:
        num_residues = 12288
    if num_sequences is not None and num_residues is not None:
        raise MissingParameterError("Either 'num_sequences' or 'num_residues' must be set, but not both.")
    if num_sequences is not None and not 0 <= num_sequences < 100:
        raise InvalidParameterError("The 'num_sequences' must be between 0 and 100.")
    if num_residues is not None and not 0 <= num_residues < 24577:
        raise InvalidParameterError("The 'num_residues' must be between 0 and 24577.")
    return num_sequences, num_residues


class MSAFuture(PoetFutureMixin, AsyncJobFuture):
    """An MSA job (``/align/align``); ``get()`` returns the MSA as a CSV reader."""

    def __init__(self, session: APISession, job: Union[Job, str], page_size: int = POET_PAGE_SIZE):
        super().__init__(session, job)
        self.page_size = page_size
        self._msa_id: Optional[str] = None
        self._prompt_id: Optional[str] = None

    @property
    def prompt_id(self) -> Optional[str]:
        if self.job.job_type == "/align/prompt" and self._prompt_id is None:
            self._prompt_id = self.job.job_id
        return self._prompt_id

    @property
    def msa_id(self) -> Optional[str]:
        if self.job.job_type == "/align/align" and self._msa_id is None:
            self._msa_id = self.job.job_id
        return self._msa_id

    def get(self, verbose: bool = False):
        """CSV reader of the MSA rows (``[name, aligned sequence]``, query first); ``wait()`` waits for the job first."""
        return self.get_msa()

    def sample_prompt(
        self,
        num_sequences: Optional[int] = None,
        num_residues: Optional[int] = None,
        method: MSASamplingMethod = MSASamplingMethod.NEIGHBORS_NONGAP_NORM_NO_LIMIT,
        homology_level: float = 0.8,
        max_similarity: float = 1.0,
        min_similarity: float = 0.0,
        always_include_seed_sequence: bool = False,
        num_ensemble_prompts: int = 1,
        random_seed: Optional[int] = None,
    ) -> "PromptFuture":
        """Sample a prompt (``num_ensemble_prompts`` replicates) from this MSA.

        Exactly one of ``num_sequences`` (< 100) and ``num_residues`` (< 24577; default 12288
        when neither is given).

        Raises:
            InvalidParameterError: a similarity/homology value outside [0, 1], or a size out of range.
            MissingParameterError: both ``num_sequences`` and ``num_residues`` given.
            APIError: the server refused the request.
        """
        num_sequences, num_residues = _check_prompt_params(num_sequences, num_residues, homology_level,
                                                           max_similarity, min_similarity)
        if random_seed is None:
            random_seed = random.randrange(1, 2**32)
        msa_id = self.msa_id
        if msa_id is None:
            raise MissingParameterError("this future has no MSA to sample a prompt from")
        params = {
            "msa_id": msa_id,
            "msa_method": MSASamplingMethod(method).value,
            "homology_level": homology_level,
            "max_similarity": max_similarity,
            "min_similarity": min_similarity,
            "force_include_first": always_include_seed_sequence,
            "replicates": num_ensemble_prompts,
            "seed": random_seed,
        }
        if num_sequences is not None:
            params["max_msa_sequences"] = num_sequences
        if num_residues is not None:
            params["max_msa_tokens"] = num_residues
        job = Job(**self.session.post(f"{PREFIX}/prompt", params=params).json())
        return PromptFuture(self.session, job, msa_id=msa_id)


class PromptFuture(MSAFuture):
    """A prompt job (``/align/prompt``); ``get()`` returns every replicate as a CSV reader."""

    def __init__(self, session: APISession, job: Union[Job, str], page_size: int = POET_PAGE_SIZE,
                 msa_id: Optional[str] = None):
        super().__init__(session, job, page_size)
        self._msa_id = msa_id

    def get(self, verbose: bool = False):
        """CSV reader of every replicate's prompt rows (``<END_PROMPT>`` rows between replicates); ``wait()`` waits first."""
        return self.get_prompt()


class _PagedFuture(PoetFutureMixin, AsyncJobFuture):
    _path = ""
    _result_cls = PoetScoreResult

    def __init__(self, session: APISession, job: Union[Job, str], page_size: int = POET_PAGE_SIZE):
        super().__init__(session, job)
        if page_size > POET_MAX_PAGE_SIZE:
            raise APIError(f"Page size must be less than the max for PoET: {POET_MAX_PAGE_SIZE}")
        self.page_size = page_size

    def get(self, verbose: bool = False):
        """All result rows (paged with ``page_size``), in input order.

        Raises:
            APIError: the job has not finished (409) or another request error.
        """
        results = []
        offset = 0
        while True:
            body = self.session.get(self._path, params={"job_id": self.job.job_id, "page_size": self.page_size,
                                                        "page_offset": offset}).json()
            page = [self._result_cls(**row) for row in body["result"]]
            results.extend(page)
            offset += len(page)
            if len(page) < self.page_size:
                return results


class PoetScoreFuture(_PagedFuture):
    """A score job (``/poet``); ``get()`` -> ``List[PoetScoreResult]``."""

    _path = "v1/poet/score"
    _result_cls = PoetScoreResult


class PoetSingleSiteFuture(_PagedFuture):
    """A single-site job; ``get()`` -> ``List[PoetSSPResult]`` (WT row ``b"WT"`` first, then
    ``A1R, A1N, ...``)."""

    _path = "v1/poet/single_site"
    _result_cls = PoetSSPResult


class PoetGenerateFuture(PoetFutureMixin, StreamingAsyncJobFuture):
    """A generation job; ``stream()``/``get()`` yield ``PoetScoreResult`` (``generated-sequence-i``)."""

    def stream(self) -> Iterator[PoetScoreResult]:
        """Rows of the generated-sequence CSV.

        Raises:
            APIError: the job has not finished or the request failed; a malformed row.
        """
        text = self.session.get("v1/poet/generate", params={"job_id": self.job.job_id}).text
        for lineno, tokens in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not tokens:
                continue
            try:
                name, sequence = tokens[:2]
                score = [float(s) for s in tokens[2:]]
            except (ValueError, IndexError) as exc:
                raise APIError(f"malformed generation result row {lineno}: {tokens!r} ({exc})") from None
            yield PoetScoreResult(sequence=sequence.encode(), score=score, name=name)


Prompt = Union[PromptFuture, str]


def check_sampling_params(temperature: float, topk: Optional[float], topp: Optional[float]) -> None:
    """The OpenProtein SDKs' checks of PoET ``generate``'s sampling parameters.

    Raises:
        InvalidParameterError: temperature outside [0.1, 2], topk outside [2, 20], topp outside [0, 1].
    """
    if not 0.1 <= temperature <= 2:
        raise InvalidParameterError("The 'temperature' must be between 0.1 and 2.")
    if topk is not None and not 2 <= topk <= 20:
        raise InvalidParameterError("The 'topk' must be between 2 and 20.")
    if topp is not None and not 0 <= topp <= 1:
        raise InvalidParameterError("The 'topp' must be between 0 and 1.")


def _prompt_id(prompt: Prompt) -> Optional[str]:
    return prompt.prompt_id if isinstance(prompt, PromptFuture) else prompt


class PoetAPI:
    """PoET and align endpoints (``session.poet``)."""

    def __init__(self, session: APISession):
        self.session = session

    # ------------------------------------------------------------------ MSA and prompts
    def create_msa(self, seed: Union[bytes, str]) -> MSAFuture:
        """Homology search with ``seed`` against the server's database -> MSA job."""
        body = b">seed\n" + _as_bytes(seed)
        job = Job(**self.session.post(f"{PREFIX}/msa", params={"is_seed": True}, files={"msa_file": body}).json())
        return MSAFuture(self.session, job)

    def upload_msa(self, msa_file: Union[bytes, str, Path, BinaryIO]) -> MSAFuture:
        """Upload an aligned MSA (a3m, aligned FASTA, Stockholm, CSV; bytes, path or file)."""
        job = Job(**self.session.post(f"{PREFIX}/msa", params={"is_seed": False},
                                      files={"msa_file": _read_file(msa_file)}).json())
        return MSAFuture(self.session, job)

    def upload_prompt(self, prompt_file: Union[bytes, str, Path, BinaryIO]) -> PromptFuture:
        """Upload a prompt as is: one block per replicate, separated by ``<END_PROMPT>`` lines."""
        try:
            job = Job(**self.session.post(f"{PREFIX}/upload_prompt",
                                          files={"prompt_file": _read_file(prompt_file)}).json())
        except APIError as exc:
            raise type(exc)(f"Failed to upload prompt post: {exc.message}", status_code=exc.status_code,
                            detail=exc.detail, url=exc.url) from None
        return PromptFuture(self.session, job)

    def get_prompt(self, job: Union[Job, str], prompt_index: Optional[int] = None):
        """CSV reader of a job's prompt (replicate ``prompt_index``, 1-based; None: all)."""
        return get_input(self.session, job, PoetInputType.PROMPT, prompt_index)

    def get_seed(self, job: Union[Job, str]):
        """CSV reader of a job's seed / uploaded MSA rows."""
        return get_input(self.session, job, PoetInputType.INPUT)

    def get_msa(self, job: Union[Job, str]):
        """CSV reader of a job's MSA."""
        return get_input(self.session, job, PoetInputType.MSA)

    def get_prompt_job(self, job_id: str) -> PromptFuture:
        """The prompt job ``job_id`` (raises :class:`InvalidJob` for another job type)."""
        job = job_get(self.session, job_id)
        if job.job_type != "/align/prompt":
            raise InvalidJob(f"job {job_id} is not a prompt job!")
        return PromptFuture(self.session, job)

    def get_msa_job(self, job_id: str) -> MSAFuture:
        """The MSA job ``job_id`` (raises :class:`InvalidJob` for another job type)."""
        job = job_get(self.session, job_id)
        if job.job_type != "/align/align":
            raise InvalidJob(f"job {job_id} is not a MSA job!")
        return MSAFuture(self.session, job)

    def load_prompt_job(self, prompt_id: str) -> PromptFuture:
        """Resume a prompt job (its MSA id comes from the job's ``root_msa`` argument)."""
        job = job_get(self.session, prompt_id)
        if job.job_type != "/align/prompt":
            raise InvalidJob(f"job {prompt_id} is not a prompt job!")
        msa_id = job_args_get(self.session, prompt_id).get("root_msa")
        return PromptFuture(self.session, job, msa_id=msa_id)

    def load_msa_job(self, msa_id: str) -> MSAFuture:
        """Resume an MSA job."""
        job = job_get(self.session, msa_id)
        if job.job_type != "/align/align":
            raise InvalidJob(f"job {msa_id} is not a MSA job!")
        return MSAFuture(self.session, job)

    def load_poet_job(self, job_id: str) -> Union[PoetSingleSiteFuture, PoetScoreFuture, PoetGenerateFuture]:
        """Resume a score / single-site / generate job."""
        job = job_get(self.session, job_id)
        if job.job_type == "/poet/single_site":
            return PoetSingleSiteFuture(self.session, job)
        if job.job_type in ("/poet", "/poet/score"):
            return PoetScoreFuture(self.session, job)
        if job.job_type == "/poet/generate":
            return PoetGenerateFuture(self.session, job)
        raise InvalidJob(f"job {job_id} is not a PoET job!")

    # ------------------------------------------------------------------ PoET
    def score(self, prompt: Prompt, queries: List[Union[bytes, str]]) -> PoetScoreFuture:
        """Score ``queries`` under every replicate of ``prompt`` (a PromptFuture or prompt id).

        Raises:
            MissingParameterError: no queries, or no prompt id.
            APIError: the server refused the request (bad residues: 400 naming row and position).
        """
        prompt_id = _prompt_id(prompt)
        if not queries:
            raise MissingParameterError("Must include queries for scoring!")
        if not prompt_id:
            raise MissingParameterError("Must include prompt_id in request!")
        variant_file = b"\n".join(_as_bytes(q) for q in queries)
        try:
            job = Job(**self.session.post("v1/poet/score", params={"prompt_id": prompt_id},
                                          files={"variant_file": variant_file}).json())
        except APIError as exc:
            raise type(exc)(f"Failed to post poet score: {exc.message}", status_code=exc.status_code,
                            detail=exc.detail, url=exc.url) from None
        return PoetScoreFuture(self.session, job)

    def single_site(self, prompt: Prompt, sequence: Union[bytes, str]) -> PoetSingleSiteFuture:
        """Score every single substitution of ``sequence`` under every replicate of ``prompt``."""
        prompt_id = _prompt_id(prompt)
        if not prompt_id:
            raise InvalidParameterError("Either parent_id or prompt_id must be set.")
        seq = sequence.decode() if isinstance(sequence, bytes) else sequence
        try:
            job = Job(**self.session.post("v1/poet/single_site",
                                          params={"variant": seq, "prompt_id": prompt_id}).json())
        except APIError as exc:
            raise type(exc)(f"Failed to post poet single-site analysis: {exc.message}",
                            status_code=exc.status_code, detail=exc.detail, url=exc.url) from None
        return PoetSingleSiteFuture(self.session, job)

    def generate(self, prompt: Prompt, num_samples: int = 100, temperature: float = 1.0,
                 topk: Optional[int] = None, topp: Optional[float] = None, max_length: int = 1000,
                 seed: Optional[int] = None) -> PoetGenerateFuture:
        """Sample ``num_samples`` sequences from ``prompt`` (repeatable with the same ``seed``).

        Raises:
            InvalidParameterError: temperature outside [0.1, 2], topk outside [2, 20], topp
                outside [0, 1], seed outside [0, 2**32].
        """
        check_sampling_params(temperature, topk, topp)
        if seed is not None and not 0 <= seed < 2**32:
            raise InvalidParameterError("The 'random_seed' must be between 0 and 2**32-1.")
        prompt_id = _prompt_id(prompt)
        if not prompt_id:
            raise MissingParameterError("Must include prompt_id in request!")
        if seed is None:
            seed = random.randrange(2**32)
        params: dict = {"prompt_id": prompt_id, "generate_n": num_samples, "temperature": temperature,
                        "maxlen": max_length, "seed": seed}
        if topk is not None:
            params["topk"] = topk
        if topp is not None:
            params["topp"] = topp
        try:
            job = Job(**self.session.post("v1/poet/generate", params=params).json())
        except APIError as exc:
            raise type(exc)(f"Failed to post PoET generation request: {exc.message}",
                            status_code=exc.status_code, detail=exc.detail, url=exc.url) from None
        return PoetGenerateFuture(self.session, job)


__all__ = [
    "MSAFuture", "MSASamplingMethod", "PoetAPI", "PoetGenerateFuture", "PoetInputType", "PoetSSPResult",
    "PoetScoreFuture", "PoetScoreResult", "PoetSingleSiteFuture", "PromptFuture", "JobStatus",
]
