"""Quality suite: the real system in PostgreSQL measured against planted archetypes.

``suite`` holds the measurements (shared by ``make quality`` and tests/db/test_quality.py);
``run`` is the ``make quality`` entry point. See docs/quality.md.
"""
