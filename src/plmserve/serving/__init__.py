"""Serving machinery shared by every HTTP contract: the per-model batching scheduler
(:mod:`.scheduler`), request limits (:mod:`.limits`) and operations (:mod:`.ops`: request ids,
access logs, metrics, health/readiness, login rate limits)."""
