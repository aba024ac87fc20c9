"""ringtrap: the backend of a spam trap.

An ingest process queues mail from the MTA into a POSIX shared-memory ring
(spilling to a tmpfs overflow directory when the ring is full); a static pool
of workers drains it, scans with spamd and records results.
"""

__version__ = "0.1.0"
