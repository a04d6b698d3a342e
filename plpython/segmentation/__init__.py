"""Server-side core of Unified Segmentation.

Runs inside PostgreSQL (PL/Python) and as plain Python in tests. The numeric
modules take numpy arrays as arguments; only :mod:`segmentation.sql_api` touches
``plpy``.
"""

__version__ = "0.1.0"
