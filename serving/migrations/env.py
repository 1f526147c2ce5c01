"""Alembic environment for the audit schema; run through `serving.audit.migrate`, not a CLI.

Online, the connection (already inside a transaction) comes from `config.attributes`; offline
(`sql=True`), the URL from the config, to print DDL for review.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()
elif connection is None:
    raise RuntimeError("run audit migrations through serving.audit.migrate (it passes one)")
else:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
