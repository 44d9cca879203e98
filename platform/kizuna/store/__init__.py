"""The store: SQL tables, migrations and keyword-only functions per resource.

Components share state only through these functions (or an HTTP API built on them),
never through each other's internals. The same code runs on SQLite (embedded) and
PostgreSQL (cluster); the contract tests run on both.
"""
