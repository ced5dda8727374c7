"""The NumPy network math.  Imports numpy and the standard library only."""
from .network import Network

__all__ = ["Network"]
