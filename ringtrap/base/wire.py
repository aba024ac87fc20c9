"""The submit socket's wire format, shared by its client and the ingest's session.

A leaf that imports nothing: ``ringtrap submit`` runs once per message and
keeps its import set near empty. The protocol itself is described in
:mod:`ringtrap.command.submit`.
"""

MAGIC = b"SUBMIT ringtrap/1\n"
TRAILER = b"END "
KEYS = ("sender", "recipient", "client_address", "client_helo", "queue_id")
# The ingest keeps this many bytes of recipients (as stored) and this many
# recipients; it leaves the rest out, counts them in the record's
# envelope.recipients_dropped and keeps the message.  The block may be longer.
MAX_HEADER = 16 * 1024
MAX_RECIPIENTS = 1000
