"""Client-side loader for Unified Segmentation: installs the system into a database."""

from segmentation import __version__ as __version__
