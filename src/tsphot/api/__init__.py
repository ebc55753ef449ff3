"""The ``time_series_photometry_tools`` REST service: FastAPI over SQLAlchemy, runs in workers.

``config`` (server settings), ``db`` (engine, SQLite WAL, Alembic upgrade), ``models`` (tables of
the seed's five records, users, tokens, uploads), ``auth`` (hashed tokens), ``paths`` (data-root
confinement), ``uploads`` (streamed, size-limited, FITS-checked, deduplicated), ``jobs`` (the
dispatcher and the worker process, the one place that calls the pipeline), ``routes`` and ``app``.
"""
