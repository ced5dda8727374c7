"""distnn: a data-parallel neural-network trainer on Ray with a pure NumPy core."""
__version__ = "0.1.0"

from . import data
from .core.network import Network

__all__ = ["Network", "data", "__version__"]
