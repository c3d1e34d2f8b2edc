"""Prometheus metrics of the server (``GET /metrics``), with ``prometheus-client``.

The metric objects live in one :class:`prometheus_client.CollectorRegistry` per process
(:data:`REGISTRY`), so several apps in one process (tests) share the counters; every metric has a
``model`` or ``route`` label where it makes sense.

========================================== =============================================================
``plmserve_http_requests_total``           requests by ``method``, ``route`` (the path template), ``status``
``plmserve_http_request_duration_seconds`` latency histogram by ``method``, ``route``
``plmserve_model_requests_total``          model requests by ``model``, ``method`` (encode, log_prob ...), ``outcome``
``plmserve_queue_depth``                   forward-pass items waiting in a model's batching queue
``plmserve_batch_size``                    histogram of items per batch, by ``model``
``plmserve_batch_tokens``                  histogram of padded tokens per batch, by ``model``
``plmserve_batches_total``                 batches computed, by ``model``, ``method``
``plmserve_tokens_total``                  residue tokens computed, by ``model`` (rate() = tokens/s)
``plmserve_tokens_per_second``             tokens/s of the last batch, by ``model``
``plmserve_model_memory_bytes``            parameter + buffer bytes of each resident model
``plmserve_jobs``                          jobs in the store by ``status`` (read at scrape time)
``plmserve_login_refusals_total``          logins refused by the rate limiter
========================================== =============================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("plmserve_http_requests", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "plmserve_http_request_duration_seconds", "HTTP request latency (seconds)", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
MODEL_REQUESTS = Counter("plmserve_model_requests", "model requests through the batching scheduler",
                         ["model", "method", "outcome"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("plmserve_queue_depth", "forward-pass items waiting in the model's queue", ["model"],
                    registry=REGISTRY)
BATCH_SIZE = Histogram("plmserve_batch_size", "items per batch", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
BATCH_TOKENS = Histogram("plmserve_batch_tokens", "padded tokens per batch", ["model"],
                         buckets=(64, 256, 512, 1024, 2048, 4096, 8192, 16384), registry=REGISTRY)
BATCHES = Counter("plmserve_batches", "batches computed", ["model", "method"], registry=REGISTRY)
TOKENS = Counter("plmserve_tokens", "residue tokens computed", ["model"], registry=REGISTRY)
TOKENS_PER_S = Gauge("plmserve_tokens_per_second", "tokens per second of the last batch", ["model"],
                     registry=REGISTRY)
MODEL_MEMORY = Gauge("plmserve_model_memory_bytes", "bytes of parameters and buffers of a resident model",
                     ["model"], registry=REGISTRY)
JOBS = Gauge("plmserve_jobs", "jobs in the store by status", ["status"], registry=REGISTRY)
LOGIN_REFUSALS = Counter("plmserve_login_refusals", "logins refused by the rate limiter", ["reason"],
                         registry=REGISTRY)
