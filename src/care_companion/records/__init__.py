"""The records database: patients, users, studies, images, predictions, feedback and the audit log.

``db`` makes engines and sessions and runs the Alembic migrations, ``models`` holds the tables, ``schemas`` the
pydantic shapes at the boundary and ``repos`` the keyword-only functions that read and write them.
"""
