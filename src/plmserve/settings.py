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
    workers: int = 1

    # --- Ray executor and model workers (issue 11: scale out on Ray; docs/deploy.md) -------
    executor: Literal["inprocess", "ray"] = "inprocess"  # where jobs run (plmserve serve --executor)
    ray_address: str | None = None  # None: a local Ray instance; "auto"; "HOST:PORT" of a head
    ray_namespace: str = "plmserve"
    ray_job_num_cpus: float = 1.0  # Ray resources declared by every job task
    ray_job_num_gpus: float = 0.0  # per job that runs a model (PoET, embeddings); /align/ jobs: none
    ray_job_memory_mb: int | None = None  # Ray logical memory per job task (None: not declared)
    job_max_attempts: int = 3  # a job is tried at most this often (worker deaths included)
    model_replicas: dict[str, int] = Field(default_factory=dict)  # model pool: slug -> Ray actors
    ray_actor_num_cpus: float = 1.0  # resources of one model-pool actor
    ray_actor_num_gpus: float = 0.0

    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file ``<data_dir>/plmserve.db`` when it is not set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'plmserve.db'}"


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with ``overrides`` (non-None values) applied on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
