"""HTTP layer (FastAPI): one module per public contract; thin adapters over plmserve.models."""
