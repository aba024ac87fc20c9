"""The exit codes of ringtrap's commands and processes, declared once (sysexits.h).

A leaf that imports nothing: ``ringtrap submit``, which the MTA starts once
per message, reads its two codes from here.
"""

EX_OK = 0
EX_USAGE = 64  # the command line is wrong
EX_NOINPUT = 66  # report: no records for the day asked; --database: the database unreadable
EX_UNAVAILABLE = 69  # no trap running (status, purge); no matplotlib or psycopg
EX_SOFTWARE = 70  # the supervisor failed unexpectedly (systemd restarts the unit)
# submit: anything but a stored or for-good refused message. Postfix's pipe(8)
# defers only on this and EX_OSERR; every other code bounces.
EX_TEMPFAIL = 75
EX_CONFIG = 78  # the configuration is wrong, or the trap could not set up what it names
