"""The bytes the ingest and its clients agree on: the submit stream and the one-line replies.

Imported by the ingest's protocols and by ``ringtrap submit``, which the MTA
starts once per message: this module imports nothing, so the client's
start-up stays the interpreter's own.  The submit protocol is described in
:mod:`ringtrap.command.submit`.
"""

# the submit stream: the first line, the trailer's start, the envelope keys
MAGIC = b"SUBMIT ringtrap/1\n"
TRAILER = b"END "
KEYS = ("sender", "recipient", "client_address", "client_helo", "queue_id")
# The ingest keeps this many bytes of recipients (as stored) and this many
# recipients; it leaves the rest out, counts them in the record's
# envelope.recipients_dropped and keeps the message.  The block may be longer.
MAX_HEADER = 16 * 1024
MAX_RECIPIENTS = 1000

# The one-line replies of the raw and submit sockets: prefixes, then reasons.
OK = b"OK"
ERR = b"ERR"
TEMPFAIL = b"TEMPFAIL"
REASON_TOO_LARGE = b"message too large"
REASON_EMPTY = b"empty message"
REASON_OVERFLOW_FULL = b"overflow full"
REASON_STORE_FAILED = b"cannot store message"
REASON_IDLE = b"idle timeout"
# the message took longer than ingest.message_timeout, however steadily it came
REASON_TIMEOUT = b"message timeout"
REASON_BUSY = b"too many connections"
REASON_SHUTTING_DOWN = b"shutting down"
# submit socket only: the stream ended without its length trailer, or not as announced
REASON_TRUNCATED = b"truncated message"
# submit socket only: not a submit stream, or a malformed envelope block
REASON_BAD_REQUEST = b"bad request"


def reply_line(kind: bytes, text: bytes) -> bytes:
    """The reply line ``<kind> <text>\\n`` as sent to the client."""
    return kind + b" " + text + b"\n"


# the refusals that are the message's own: a client drops the message for good
FINAL_REFUSALS = (reply_line(ERR, REASON_TOO_LARGE), reply_line(ERR, REASON_EMPTY))
