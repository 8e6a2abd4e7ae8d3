"""The chaos soak (`make chaos`, `python -m chaos`): a mixed load on a stack of its own
(PostgreSQL, Redis, gunicorn, the Procfile's workers and Beat) while a fault schedule
kills, pauses and restarts its parts; then the invariants, printed as figures."""
