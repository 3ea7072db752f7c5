"""Alembic environment of the farm results database (see :mod:`edgepack.farm.store`).

Run programmatically by :func:`edgepack.farm.store.upgrade`, which hands over an open
connection in ``config.attributes["connection"]``; ``sqlalchemy.url`` is used otherwise.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from edgepack.farm.store import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as fresh:
        _run(fresh)
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
