"""PostgreSQL: the connection and migrations (connection.py, migrate.py), the transactional
outbox and its relay (outbox.py) and the inbox (inbox.py). See docs/outbox.md."""
