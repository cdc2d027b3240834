"""catalog/: the one DuckDB file, and the only package that speaks SQL.

==============  ==================================================================
schema.py       tables, views (the public contract) and migrations
db.py           :class:`Catalog`: connection, transactions, every dsbuild read/write
lock.py         :class:`BuildLock`: the writers' exclusive lock file beside the catalog; asking a yielding holder
held.py         :class:`~dsbuild.catalog.held.HeldCatalog`: a connection kept between short writes (the review app)
image_state.py  an image's current label/status/review state in Python (the images view's rules, for a few ids)
query.py        users' SQL: the read-only sandbox and the named ``@name`` queries
queries/        the built-in named queries (``*.sql``, shipped as package data)
==============  ==================================================================
"""

from dsbuild.catalog.db import Catalog, open_for_writing, translate_error, utcnow
from dsbuild.catalog.lock import BuildLock
from dsbuild.catalog.query import list_named_queries, named_query_dirs, resolve_named_query, sandboxed_query
from dsbuild.catalog.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "BuildLock", "Catalog", "list_named_queries", "named_query_dirs", "open_for_writing",
           "resolve_named_query", "sandboxed_query", "translate_error", "utcnow"]
