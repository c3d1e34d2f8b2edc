"""plmserve: protein language models on your own hardware.

ESM-2 (BioLM-compatible encode / predict / log_prob), ESM3 (Forge-compatible
``generate_tensor``) and PoET (OpenProtein-compatible MSA -> prompt -> score /
single-site / generate workflows), with a CLI and a Python SDK over one engine.
"""

__version__ = "0.1.0"
