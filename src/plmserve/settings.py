"""Settings in one place: environment variables with the prefix ``PLMSERVE_``; CLI flags override.

Example: ``PLMSERVE_MODEL_DIR=/models PLMSERVE_API_KEYS='["k1"]' plmserve serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "plmserve"


class Settings(BaseSettings):
    """All plmserve settings. Construct directly in code/tests; read from env in the CLI."""

    model_config = SettingsConfigDict(env_prefix="PLMSERVE_", extra="ignore")

    # --- server -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = Field(default_factory=list, description="accepted API keys (Token/Bearer)")
    no_auth: bool = False

    # --- models -------------------------------------------------------------------
    load_format: Literal["auto", "dummy"] = "auto"
    model_dir: Path | None = Field(
        default=None, description="directory searched for local weights (<dir>/<slug>/ or official files)"
    )
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16
    offline: bool = False  # never try the network (also honoured: HF_HUB_OFFLINE=1)

    # --- ESM-2 limits ---------------------------------------------------------------
    max_items: int = 32
    max_residues: int = 32768
    toks_per_batch: int = 4096

    # --- ESM3 ---------------------------------------------------------------------
    esm3_batch_window_ms: float = 5.0

    # --- BioLM v3 routes and gzip request bodies (issue 10) ------------------------
    max_decompressed_body_bytes: int = Field(
        default=32 * 2**20, description="largest request body accepted after Content-Encoding: gzip decompression"
    )
    biolm_v3_max_items: int = Field(default=8, description="items per /api/v3 request (BioLM's batch size)")

    # --- align / jobs ---------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: sqlite:///<data_dir>/plmserve.db
    msa_database: Path | None = None  # FASTA searched by create_msa (pyhmmer/mmseqs backends)
    msa_backend: Literal["pyhmmer", "mmseqs", "colabfold"] = "pyhmmer"
    colabfold_url: str = "https://api.colabfold.com"
    # job worker threads (issue 14: 4, was 1): PoET scoring jobs wait on the model's batching
    # scheduler, which interleaves them fairly, so a 1-variant job runs beside a long scan
    workers: int = 4

    # --- Ray executor and model workers (issue 11: scale out on Ray; docs/deploy.md) -------
    executor: Literal["inprocess", "ray"] = "inprocess"  # where jobs run (plmserve serve --executor)
    ray_address: str | None = None  # None: a local Ray instance; "auto"; "HOST:PORT" of a head
    ray_namespace: str = "plmserve"
    ray_job_num_cpus: float = 1.0  # Ray resources declared by every job task
    ray_job_num_gpus: float = 0.0  # per job that runs a model (PoET, embeddings); /align/ jobs: none
    ray_job_memory_mb: int | None = None  # Ray logical memory per job task (None: not declared)
    job_max_attempts: int = 3  # runs of one job (first + re-runs after interruptions, worker deaths) before FAILURE
    model_replicas: dict[str, int] = Field(default_factory=dict)  # model pool: slug -> Ray actors
    ray_actor_num_cpus: float = 1.0  # resources of one model-pool actor
    ray_actor_num_gpus: float = 0.0
    ray_prompt_cache_mb: int = 4096  # PoET prompt caches shared through Ray's object store (0: off)
    # --- serving engine: batching, limits, operations (issue 14) ---------------------
    served_models: list[str] | None = Field(
        default=None, description="model allowlist (--models esm2-8m,poet); None: the models whose weights "
        "are present (every model with load_format=dummy)")
    memory_budget_bytes: int | None = Field(
        default=None, description="bytes resident models may take together (LRU eviction beyond); "
        "None: the memory available when the server starts")
    max_queue_items: int = 65536  # forward-pass items waiting per model (full -> 503 + Retry-After)
    max_forward_passes: int = 8192  # per request (PLL: one pass per residue)
    batch_target_s: float | None = None  # optional cap: a batch of ~this much compute (seconds)
    express_max_tokens: int = 128  # requests this short (padded tokens) run beside the batch (0: off)
    # a scheduling round takes units worth this many forward passes, sorted by length into passes
    # of toks_per_batch padded tokens (less padding); 1 = one pass per round in arrival order
    sort_window_passes: int = Field(default=2, ge=1, le=16)
    # --- ESM3 serving: bounded engine, fairness, replicas (issue 14, branch s14b) -----
    esm3_max_sessions: int = Field(
        default=1024, description="ESM3 requests (generation sessions and single forward passes) queued or "
        "running per model; beyond it: 503 with Retry-After")
    esm3_max_batch_size: int = Field(
        default=16, description="ESM3 generation sessions stepped together per model (rows per decoding step); "
        "more wait and are admitted round-robin between principals")
    max_body_bytes: int = 8 * 2**20  # JSON/other bodies, checked before parsing and before auth
    max_upload_bytes: int = 32 * 2**20  # multipart bodies (MSA, prompt, variant files)
    poet_max_sequence_length: int = 4096  # residues per PoET sequence (variants, seeds, single-site)
    poet_max_single_site_positions: int = 2048  # positions of a single-site scan (19 records each)
    max_active_jobs_per_user: int = 64  # PENDING + RUNNING jobs per owner (beyond: 429)
    keep_alive_s: int = 75  # HTTP keep-alive (> the 5 s polling of the official SDKs)
    shutdown_timeout_s: float = 30.0  # bounded drain of in-flight requests on SIGTERM
    login_attempts_per_minute: int = 10  # failed logins per user name and per client address (then 429)

    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file ``<data_dir>/plmserve.db`` when it is not set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'plmserve.db'}"


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with ``overrides`` (non-None values) applied on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
