"""The ``openprotein-python`` 0.17 surface of the plmserve SDK: ``session.align``,
``session.prompt``, ``session.embedding`` (``.poet``) and ``session.load_job``.

Same method names, arguments and result types as the official 0.17 SDK (wire facts in
``openprotein-v1-api.md``), so notebooks written for it run against plmserve::

    session = plmserve.client.connect("http://127.0.0.1:8000", "alice", "secret-pw")
    msa = session.align.create_msa("MSIQHFRVALIPFFAAFCLPVFA...")
    prompt = msa.sample_prompt(num_ensemble_prompts=3, random_seed=42)
    poet = session.embedding.poet
    scores = poet.score(["MSIQ...", "MSIA..."], prompt=prompt).wait()     # [Score(name, sequence, score)]
    ssp = poet.single_site("MSIQ...", prompt=prompt).wait()               # [SingleSiteScore], WT first
    gen = poet.generate(prompt, num_samples=5, seed=7).wait()             # [Score]
    emb = poet.embed(["MSIQ..."], prompt=prompt).wait()                   # [(sequence, ndarray)]

Differences from the official SDK: HTTP errors are :class:`plmserve.client.errors.APIError`
(with ``status_code``), and ``wait`` polls every ``session.poll_interval`` seconds.
"""

from __future__ import annotations

import csv
import io
import random
import struct
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence, Union

import numpy as np

from plmserve.client.base import APISession
from plmserve.client.errors import InvalidParameterError, MissingParameterError
from plmserve.client.jobs import AsyncJobFuture, Job, job_args_get, job_get
from plmserve.client.poet import MSASamplingMethod, check_sampling_params  # shared with the 0.2 API

SeqLike = Union[str, bytes]


def _text(x: SeqLike) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass
class Protein:
    """A named sequence (``sequence`` as bytes, like the official SDK's ``Protein``)."""

    sequence: bytes
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sequence, str):
            self.sequence = self.sequence.encode()


@dataclass
class Score:
    """One scored (or generated) sequence; ``score`` has one log-likelihood per replicate."""

    name: str
    sequence: bytes
    score: np.ndarray
    query_id: str | None = None


@dataclass
class SingleSiteScore:
    """One single-site row: ``mut_code`` (``WT`` for the base sequence, else ``A1R``-style)."""

    mut_code: str
    score: np.ndarray
    query_id: str | None = None


class MSAType(str, Enum):
    RAW = "RAW"
    GENERATED = "GENERATED"


def _read(f: Union[bytes, str, Path, BinaryIO]) -> tuple[bytes, str]:
    if isinstance(f, bytes):
        return f, "msa_file"
    if isinstance(f, Path) or (isinstance(f, str) and "\n" not in f and Path(f).is_file()):
        p = Path(f)
        return p.read_bytes(), p.name
    if isinstance(f, str):
        return f.encode(), "msa_file"
    data = f.read()
    name = Path(getattr(f, "name", "msa_file") or "msa_file").name
    return (data.encode() if isinstance(data, str) else data), name


def _csv_rows(text: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in csv.reader(io.StringIO(text)) if len(r) >= 2]


# ---------------------------------------------------------------------- align
class MSAFuture(AsyncJobFuture):
    """An MSA job (``/align/align``): ``wait()``/``get()`` give ``[(name, aligned sequence)]``,
    the query first."""

    @property
    def msa_id(self) -> str:
        return self.job.job_id

    def get(self, verbose: bool = False) -> list[tuple[str, str]]:
        return self.get_input(MSAType.GENERATED)

    def get_input(self, input_type: MSAType | str) -> list[tuple[str, str]]:
        """Rows of ``v1/align/inputs`` (RAW: the seed or upload; GENERATED: the MSA)."""
        kind = input_type.value if isinstance(input_type, MSAType) else str(input_type)
        r = self.session.get("v1/align/inputs", params={"job_id": self.id, "msa_type": kind})
        return _csv_rows(r.text)

    def get_seed(self) -> str:
        """The seed (first row of the RAW input)."""
        return self.get_input(MSAType.RAW)[0][1]

    def sample_prompt(self, num_sequences: int | None = None, num_residues: int | None = None,
                      method: MSASamplingMethod | str = MSASamplingMethod.NEIGHBORS_NONGAP_NORM_NO_LIMIT,
                      homology_level: float = 0.8, max_similarity: float = 1.0, min_similarity: float = 0.0,
                      always_include_seed_sequence: bool = False, num_ensemble_prompts: int = 1,
                      random_seed: int | None = None) -> "Prompt":
        """Sample ``num_ensemble_prompts`` prompt replicates from this MSA (``POST v1/align/prompt``).

        Raises:
            MissingParameterError: both ``num_sequences`` and ``num_residues``.
            InvalidParameterError: a similarity or homology level outside [0, 1].
        """
        for name, value in (("homology_level", homology_level), ("max_similarity", max_similarity),
                            ("min_similarity", min_similarity)):
            if not 0 <= value <= 1:
                raise InvalidParameterError(f"The '{name}' must be between 0 and 1.")
        if num_sequences is not None and num_residues is not None:
            raise MissingParameterError("Either 'num_sequences' or 'num_residues' must be set, but not both.")
        params: dict[str, Any] = {
            "msa_id": self.id, "msa_method": MSASamplingMethod(method).value, "homology_level": homology_level,
            "max_similarity": max_similarity, "min_similarity": min_similarity,
            "force_include_first": always_include_seed_sequence, "replicates": num_ensemble_prompts,
            "seed": random.randrange(2**32) if random_seed is None else random_seed,
        }
        if num_sequences is not None:
            params["max_msa_sequences"] = num_sequences
        else:
            params["max_msa_tokens"] = num_residues if num_residues is not None else 12288
        job = Job(**self.session.post("v1/align/prompt", params=params).json())
        return PromptAPI(self.session).get_prompt(job.job_id)


class AlignAPI:
    """``session.align``: MSAs from a seed (homology search) or an upload."""

    def __init__(self, session: APISession):
        self.session = session

    def create_msa(self, seed: SeqLike) -> MSAFuture:
        """Search homologs of ``seed`` in the server's database (job ``/align/align``)."""
        body = b">seed\n" + (seed.encode() if isinstance(seed, str) else bytes(seed))
        r = self.session.post("v1/align/msa", params={"is_seed": True}, files={"msa_file": ("msa_file", body)})
        return MSAFuture(self.session, Job(**r.json()))

    def upload_msa(self, msa_file: Union[bytes, str, Path, BinaryIO]) -> MSAFuture:
        """Upload an aligned MSA (a3m, aligned FASTA, Stockholm, CSV; a file, path or bytes)."""
        data, name = _read(msa_file)
        r = self.session.post("v1/align/msa", params={"is_seed": False}, files={"msa_file": (name, data)})
        return MSAFuture(self.session, Job(**r.json()))

    def get_msa(self, job_id: str) -> list[tuple[str, str]]:
        return MSAFuture(self.session, job_id).get()

    def get_seed(self, job_id: str) -> str:
        return MSAFuture(self.session, job_id).get_seed()


# ---------------------------------------------------------------------- prompts and queries
@dataclass
class PromptMetadata:
    id: str
    name: str
    created_date: str
    num_replicates: int
    status: str
    description: str | None = None
    job_id: str | None = None


def _parse_prompt_zip(data: bytes) -> list[list[Protein]]:
    outer = zipfile.ZipFile(io.BytesIO(data))
    reps = []
    for name in outer.namelist():
        if not name.startswith("context-"):
            continue
        inner = zipfile.ZipFile(io.BytesIO(outer.read(name)))
        rep: list[Protein] = []
        for entry in inner.namelist():
            if not entry.endswith(".fasta"):
                continue
            cur: str | None = None
            chunks: list[str] = []
            for line in inner.read(entry).decode().splitlines() + [">"]:
                if line.startswith(">"):
                    if cur is not None:
                        rep.append(Protein("".join(chunks), cur))
                    cur, chunks = line[1:].strip(), []
                elif line.strip():
                    chunks.append(line.strip())
        reps.append(rep)
    return reps


class Prompt(AsyncJobFuture):
    """A prompt: uploaded (no job) or sampled from an MSA (its ``/align/prompt`` job).
    ``wait()``/``get()`` give the replicates, each a list of :class:`Protein`."""

    def __init__(self, session: APISession, metadata: PromptMetadata):
        self.session = session
        self.metadata = metadata
        self.job = job_get(session, metadata.job_id) if metadata.job_id else Job(
            job_id=metadata.id, job_type="/align/prompt", status=metadata.status)

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def num_replicates(self) -> int:
        return self.metadata.num_replicates

    def refresh(self) -> None:
        if self.metadata.job_id:
            super().refresh()

    def get(self, verbose: bool = False) -> list[list[Protein]]:
        return _parse_prompt_zip(self.session.get(f"v1/prompt/{self.id}/content").content)


@dataclass
class Query:
    """A PoET-2 query (id = lowercase UUIDv4)."""

    id: str
    created_date: str
    session: APISession = field(repr=False, default=None)  # type: ignore[assignment]

    def get(self) -> bytes:
        return self.session.get(f"v1/prompt/query/{self.id}/content").content


class PromptAPI:
    """``session.prompt``: upload, list and read prompts; PoET-2 queries."""

    def __init__(self, session: APISession):
        self.session = session

    def create_prompt(self, context: Sequence[Any] | Sequence[Sequence[Any]], name: str | None = None,
                      description: str | None = None) -> Prompt:
        """Upload a prompt: one replicate (a list of sequences / :class:`Protein`) or a list of
        replicates. Strings are sequences; unnamed entries are called ``unnamed-{i:06}``."""
        reps = list(context)
        if not reps or not isinstance(reps[0], (list, tuple)):
            reps = [reps]
        files = []
        for i, rep in enumerate(reps):
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                recs = []
                for j, item in enumerate(rep):
                    seq = _text(item.sequence if isinstance(item, Protein) else item)
                    nm = (item.name if isinstance(item, Protein) else None) or f"unnamed-{j:06d}"
                    recs.append(f">{nm}\n{seq}\n")
                if recs:
                    zf.writestr("000000.fasta", "".join(recs))
            files.append(("context", (f"context-{i}.zip", buf.getvalue(), "application/zip")))
        data = {k: v for k, v in (("name", name), ("description", description)) if v}
        meta = self.session.post("v1/prompt/create_prompt", files=files, data=data or None).json()
        return Prompt(self.session, PromptMetadata(**meta))

    def get_prompt(self, prompt_id: str) -> Prompt:
        return Prompt(self.session, PromptMetadata(**self.session.get(f"v1/prompt/{prompt_id}").json()))

    def list_prompts(self) -> list[Prompt]:
        return [Prompt(self.session, PromptMetadata(**m)) for m in self.session.get("v1/prompt").json()]

    def create_query(self, query: SeqLike | Protein) -> Query:
        seq = _text(query.sequence if isinstance(query, Protein) else query)
        name = (query.name if isinstance(query, Protein) else None) or "query"
        r = self.session.post("v1/prompt/query",
                              files={"query": ("query.fasta", f">{name}\n{seq}\n".encode(), "text/x-fasta")})
        return Query(session=self.session, **r.json())

    def get_query(self, query_id: str) -> Query:
        return Query(session=self.session, **self.session.get(f"v1/prompt/query/{query_id}").json())


# ---------------------------------------------------------------------- embeddings
def _scores_csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0] if rows else []), rows[1:]


class ScoreFuture(AsyncJobFuture):
    """``/poet/score`` and ``/poet/score/indel``: ``[Score]`` in input order."""

    def stream(self) -> Iterator[Score]:
        header, rows = _scores_csv(self.session.get(f"v1/embeddings/{self.id}/scores").text)
        q = 1 if header and header[0].strip().lower() == "query_id" else 0
        for r in rows:
            yield Score(r[q], r[q + 1].encode(), np.array([float(x) for x in r[q + 2:]]), r[0] or None if q else None)

    def get(self, verbose: bool = False) -> list[Score]:
        return list(self.stream())

    @property
    def sequences(self) -> list[bytes]:
        return [s.encode() for s in self.session.get(f"v1/embeddings/embed/{self.id}/sequences").json()]


class SingleSiteFuture(ScoreFuture):
    """``/poet/single_site``: ``[SingleSiteScore]``, the base sequence (``WT``) first."""

    def stream(self) -> Iterator[SingleSiteScore]:  # type: ignore[override]
        header, rows = _scores_csv(self.session.get(f"v1/embeddings/{self.id}/scores").text)
        for r in rows:
            yield SingleSiteScore(r[0], np.array([float(x) for x in r[1:]]))


class GenerateFuture(ScoreFuture):
    """``/poet/generate``: ``[Score]`` named ``generated-sequence-{i}``."""

    def stream(self) -> Iterator[Score]:
        header, rows = _scores_csv(self.session.get(f"v1/embeddings/{self.id}/generate").text)
        for r in rows:
            yield Score(r[0], r[1].encode(), np.array([float(x) for x in r[2:]]))


class EmbeddingsResultFuture(AsyncJobFuture):
    """``/embeddings/embed`` and ``/embeddings/logits``: ``[(sequence bytes, ndarray)]`` in
    submission order (one framed-stream request)."""

    def __init__(self, session: APISession, job: Job | str, sequences: Sequence[SeqLike] | None = None):
        super().__init__(session, job)
        self._sequences = [s.encode() if isinstance(s, str) else bytes(s) for s in sequences] if sequences else None

    @property
    def sequences(self) -> list[bytes]:
        if self._sequences is None:
            kind = self.job.job_type.rsplit("/", 1)[-1]
            self._sequences = [s.encode() for s in self.session.get(f"v1/embeddings/{kind}/{self.id}/sequences").json()]
        return self._sequences

    def get_item(self, sequence: SeqLike) -> np.ndarray:
        """The array of one submitted sequence (``GET v1/embeddings/{kind}/{job}/{sequence}``)."""
        kind = self.job.job_type.rsplit("/", 1)[-1]
        data = self.session.get(f"v1/embeddings/{kind}/{self.id}/{_text(sequence)}").content
        return np.load(io.BytesIO(data), allow_pickle=False)

    def get(self, verbose: bool = False) -> list[tuple[bytes, np.ndarray]]:
        body = self.session.get(f"v1/embeddings/{self.id}/stream").content
        arrays, pos = [], 0
        while pos < len(body):
            if pos + 8 > len(body):
                raise ValueError("truncated frame header in the embeddings stream")
            (n,) = struct.unpack(">Q", body[pos:pos + 8])
            if pos + 8 + n > len(body):
                raise ValueError("truncated frame in the embeddings stream")
            arrays.append(np.load(io.BytesIO(body[pos + 8:pos + 8 + n]), allow_pickle=False))
            pos += 8 + n
        return list(zip(self.sequences, arrays))


@dataclass
class ModelMetadata:
    model_id: str
    description: dict
    max_sequence_length: int | None = None
    dimension: int | None = None
    output_types: list[str] | None = None
    input_tokens: list[str] | None = None
    output_tokens: list[str] | None = None
    token_descriptions: list | None = None


def _prompt_id(prompt: Any) -> str | None:
    if prompt is None:
        return None
    return prompt.id if hasattr(prompt, "id") else str(prompt)


class EmbeddingModel:
    """A model of ``v1/embeddings/models`` (``embed``/``logits``)."""

    def __init__(self, session: APISession, metadata: ModelMetadata):
        self.session = session
        self.metadata = metadata

    @property
    def id(self) -> str:
        return self.metadata.model_id

    def _post(self, action: str, body: dict[str, Any]) -> Job:
        return Job(**self.session.post(f"v1/embeddings/models/{self.id}/{action}", json=body).json())

    def embed(self, sequences: Sequence[SeqLike], reduction: str | None = "MEAN", prompt: Any = None,
              **kwargs: Any) -> EmbeddingsResultFuture:
        """Embeddings: ``reduction`` MEAN/SUM gives ``[D]`` per sequence, None per residue ``[L, D]``."""
        body: dict[str, Any] = {"sequences": [_text(s) for s in sequences]}
        if reduction:
            body["reduction"] = reduction.value if isinstance(reduction, Enum) else str(reduction)
        if _prompt_id(prompt):
            body["prompt_id"] = _prompt_id(prompt)
        return EmbeddingsResultFuture(self.session, self._post("embed", body), sequences)

    def logits(self, sequences: Sequence[SeqLike], prompt: Any = None, **kwargs: Any) -> EmbeddingsResultFuture:
        """Per-residue logits ``[L, V]`` per sequence."""
        body: dict[str, Any] = {"sequences": [_text(s) for s in sequences]}
        if _prompt_id(prompt):
            body["prompt_id"] = _prompt_id(prompt)
        return EmbeddingsResultFuture(self.session, self._post("logits", body), sequences)


class PoETModel(EmbeddingModel):
    """``session.embedding.poet``: PoET-1 conditioned on a prompt."""

    def score(self, sequences: Sequence[SeqLike], prompt: Any = None) -> ScoreFuture:
        body = {"sequences": [_text(s) for s in sequences], "prompt_id": _prompt_id(prompt)}
        return ScoreFuture(self.session, self._post("score", body))

    def single_site(self, sequence: SeqLike, prompt: Any = None) -> SingleSiteFuture:
        body = {"base_sequence": _text(sequence), "prompt_id": _prompt_id(prompt)}
        return SingleSiteFuture(self.session, self._post("score_single_site", body))

    def indel(self, sequence: SeqLike, insert: str | None = None, delete: list[int] | int | None = None,
              prompt: Any = None) -> ScoreFuture:
        """Score every insertion of ``insert`` and deletion of each size in ``delete``."""
        if not insert and not delete:
            raise ValueError("Expected insert and/or delete to be provided.")
        body: dict[str, Any] = {"base_sequence": _text(sequence), "prompt_id": _prompt_id(prompt)}
        if insert:
            body["insert"] = insert
        if delete:
            body["delete"] = [delete] if isinstance(delete, int) else list(delete)
        return ScoreFuture(self.session, self._post("score/indel", body))

    def generate(self, prompt: Any, num_samples: int = 100, temperature: float = 1.0, topk: float | None = None,
                 topp: float | None = None, max_length: int = 1000, seed: int | None = None) -> GenerateFuture:
        """Sample ``num_samples`` sequences (``seed`` makes it repeatable).

        Raises:
            InvalidParameterError: temperature outside [0.1, 2], topk outside [2, 20], topp
                outside [0, 1], seed outside [0, 2**32].
        """
        check_sampling_params(temperature, topk, topp)
        if seed is not None and not 0 <= seed <= 2**32:
            raise InvalidParameterError("The 'seed' must be between 0 and 2**32.")
        body: dict[str, Any] = {"n_sequences": num_samples, "temperature": temperature, "maxlen": max_length,
                                "seed": random.randrange(2**32) if seed is None else seed,
                                "prompt_id": _prompt_id(prompt)}
        if topk is not None:
            body["topk"] = topk
        if topp is not None:
            body["topp"] = topp
        return GenerateFuture(self.session, self._post("generate", body))


class EmbeddingsAPI:
    """``session.embedding``: the server's models as attributes (``poet``; ``-`` becomes ``_``)."""

    def __init__(self, session: APISession):
        self.session = session
        self._models: dict[str, EmbeddingModel] = {}
        for m in session.get("v1/embeddings/models", params={"verbose": True}).json():
            meta = ModelMetadata(**m)
            cls = PoETModel if meta.model_id == "poet" else EmbeddingModel
            self._models[meta.model_id] = cls(session, meta)

    def list_models(self) -> list[EmbeddingModel]:
        return list(self._models.values())

    def get_model(self, model_id: str) -> EmbeddingModel:
        try:
            return self._models[model_id]
        except KeyError:
            available = ", ".join(self._models)
            raise AttributeError(f"model '{model_id}' is not served here; available: {available}") from None

    def __getattr__(self, name: str) -> EmbeddingModel:
        models = self.__dict__.get("_models", {})
        for mid, model in models.items():
            if mid.replace("-", "_") == name:
                return model
        raise AttributeError(name)


_FUTURES = {
    "/align/align": MSAFuture,
    "/poet/score": ScoreFuture,
    "/poet/score/indel": ScoreFuture,
    "/poet/single_site": SingleSiteFuture,
    "/poet/generate": GenerateFuture,
    "/embeddings/embed": EmbeddingsResultFuture,
    "/embeddings/logits": EmbeddingsResultFuture,
}


def load_job(session: APISession, job_id: str) -> AsyncJobFuture:
    """The future of a job by id, of the class its ``job_type`` selects (``/align/prompt``: a
    :class:`Prompt`).

    Raises:
        APIError: 404 for unknown ids.
        ValueError: a job type this surface has no future for (e.g. the legacy ``/poet``).
    """
    job = job_get(session, job_id)
    if job.job_type == "/align/prompt":
        return PromptAPI(session).get_prompt(job.job_id)
    cls = _FUTURES.get(job.job_type)
    if cls is None:
        raise ValueError(f"Unsupported job type: {job.job_type}")
    return cls(session, job)


def job_args(session: APISession, job_id: str) -> dict[str, Any]:
    """``GET v1/jobs/{id}/args``."""
    return job_args_get(session, job_id)


__all__ = [
    "AlignAPI", "EmbeddingModel", "EmbeddingsAPI", "EmbeddingsResultFuture", "GenerateFuture", "MSAFuture",
    "ModelMetadata", "PoETModel", "Prompt", "PromptAPI", "PromptMetadata", "Protein", "Query", "Score",
    "ScoreFuture", "SingleSiteFuture", "SingleSiteScore", "load_job",
]
