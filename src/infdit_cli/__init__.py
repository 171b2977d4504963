"""infdit: the Inf-DiT ultra-high-resolution upscaler."""

__version__ = "0.1.0"
