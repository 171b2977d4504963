"""The Inf-DiT network and its EDM preconditioning (no I/O here)."""

from infdit_cli.model.network import InfDiT
from infdit_cli.model.precond import EDMDenoiser, edm_coefficients

__all__ = ["InfDiT", "EDMDenoiser", "edm_coefficients"]
