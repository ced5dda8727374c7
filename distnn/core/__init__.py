"""The NumPy network math.  Imports numpy and the standard library only."""
from . import conv  # noqa: F401  (registers the image layers in layers.LAYERS)
from .network import Network

__all__ = ["Network"]
