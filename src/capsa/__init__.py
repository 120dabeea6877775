"""capsa: isolated jobs, images and live-attachable resource capsules on Linux."""

__version__ = "0.1.0"
__all__ = ["__version__"]
