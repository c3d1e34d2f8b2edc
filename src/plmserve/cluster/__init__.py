"""Running plmserve across machines on Ray: model worker pools (see docs/deploy.md)."""
