"""DPM-Solver++(2M) for infdit, shipped as a separate distribution to exercise the plugin API."""

from infdit_dpmpp.sampler import DPMPP2M

__all__ = ["DPMPP2M"]
__version__ = "0.1.0"
