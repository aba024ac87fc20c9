"""``ringtrap submit``: the MTA's pipe client for the submit socket.

Reads one message on standard input, sends it with the envelope the MTA
gave on the command line, waits for the ingest's reply line and exits so
that the MTA never bounces trap mail and never counts a lost message as
delivered:

    0   ``OK <id>`` (stored) or ``ERR message too large`` / ``ERR empty
        message`` (refused for good: a trap never bounces, so the MTA should
        drop the message)
    75  anything else (EX_TEMPFAIL: the MTA defers and retries): no socket,
        connection refused, ``TEMPFAIL``, any other ``ERR`` (a message not
        stored for a reason that is not the message's own), no reply,
        timeout, a usage error in the MTA's configuration

It never exits 1: Postfix's pipe(8) bounces on every status but 75 and 71.

Submit protocol (one message per connection; the constants of
:mod:`ringtrap.base.wire` name every piece)::

    client  SUBMIT ringtrap/1\\n            the first line, always
            <key> <value>\\n                zero or more envelope lines:
                                           sender, recipient (repeatable),
                                           client_address, client_helo,
                                           queue_id; unknown keys are ignored
            \\n                             end of the envelope block
            <the message, any bytes>
            END <n>\\n                      n = the message's length in bytes, or
                                           dd's closing report ("... records
                                           in", "... records out", "<n> bytes
                                           ..."), which the sh wrapper sends
            then shutdown(SHUT_WR) or close
    server  one line, as on the raw socket: OK <id>, ERR <reason> or
            TEMPFAIL <reason>, then close

The envelope comes before the message and is written by this client, never
parsed out of the message, so nothing a message contains can pose as the
MTA's envelope.  The trailing length lets the ingest tell a message that
ended from a client that died midway (both look like end of stream): a
stream whose last line is not ``END <n>`` with the right ``n`` is refused
with ``TEMPFAIL``.  The length goes last so that a client can stream a
message of unknown size (the sh wrapper ``ringtrap-deliver`` lets dd copy
the message and send its own report as the trailer).

Start-up cost matters: the MTA runs this once per message.  The module
imports nothing beyond ``_socket`` (the ``socket`` module and argparse would
each double the interpreter's start-up) and two leaves of constants
(:mod:`ringtrap.base.wire`, :mod:`ringtrap.base.exits`), and does not import
the rest of the package unless ``-c FILE`` asks for a configuration; it runs
as a plain script too (``python3 -S .../ringtrap/command/submit.py``).
"""

import _socket
import os
import sys
import time

if not __package__:  # run as a plain script: the package is two folders up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ringtrap.base.exits import EX_OK, EX_TEMPFAIL
from ringtrap.base.wire import FINAL_REFUSALS, KEYS, MAGIC, TRAILER

DEFAULT_TIMEOUT = 60.0
_CHUNK = 64 * 1024
_MAX_REPLY = 4096

USAGE = """\
usage: ringtrap submit [--socket PATH | -c FILE] [--timeout SECONDS]
                       [--sender ADDR] [--recipient ADDR ...]
                       [--client-address IP] [--client-helo NAME] [--queue-id ID]

Deliver the message on standard input to ringtrap's submit socket.
Exit 0 when ringtrap stored it (OK) or refused it for good (ERR message too
large, ERR empty message), 75 on anything else, so the MTA defers instead of
bouncing or losing it.

  --socket PATH         the submit socket (default: submit.sock in ringtrap's
                        runtime directory, /run/ringtrap as root)
  -c, --config FILE     take ingest.submit_socket from this configuration
  --timeout SECONDS     give up (exit 75) after this long (default 60)
  --sender ADDR         envelope sender (Postfix ${sender}; "" = null sender)
  --recipient ADDR      envelope recipient, repeatable (${original_recipient})
  --client-address IP   the SMTP client's address (${client_address})
  --client-helo NAME    the SMTP client's HELO (${client_helo})
  --queue-id ID         the MTA's queue id (${queue_id})
"""

_OPTIONS = {
    "--sender": "sender",
    "--recipient": "recipient",
    "--client-address": "client_address",
    "--client-helo": "client_helo",
    "--queue-id": "queue_id",
    "--socket": "socket",
    "--timeout": "timeout",
    "-c": "config",
    "--config": "config",
}


class UsageError(Exception):
    """The command line is wrong: the MTA's configuration needs fixing."""


def parse_args(argv: list[str]) -> dict[str, list[str]]:
    """Options as {name: [values]}, e.g. {"recipient": ["a@x", "b@x"]}.

    Accepts ``--opt VALUE`` and ``--opt=VALUE`` (pipe(8) expands
    ``--recipient=${recipient}`` into one such word per recipient).
    """
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word in ("-h", "--help"):
            out["help"] = []
            continue
        name, eq, value = word.partition("=")
        key = _OPTIONS.get(name if word.startswith("--") else word)
        if key is None:
            raise UsageError(f"unknown argument {word!r}")
        if not eq or not word.startswith("--"):
            if i >= len(argv):
                raise UsageError(f"{word} needs a value")
            value = argv[i]
            i += 1
        out.setdefault(key, []).append(value)
    for key, values in out.items():
        if key != "recipient" and len(values) > 1:
            raise UsageError(f"--{key.replace('_', '-')} given more than once")
    return out


def envelope_block(opts: dict[str, list[str]]) -> bytes:
    """The magic line, the envelope lines and the blank line that ends them.

    A value cannot hold a line break (it would end the line early); MTAs
    never put one in an address, so one is replaced by a space.  However
    many recipients there are, the block is sent whole: the ingest keeps
    what fits and counts the rest.
    """
    lines = [MAGIC]
    for key in KEYS:
        for value in opts.get(key, ()):
            raw = os.fsencode(value).replace(b"\r", b" ").replace(b"\n", b" ")
            lines.append(key.encode() + b" " + raw + b"\n")
    lines.append(b"\n")
    return b"".join(lines)


def default_socket() -> str:
    """The submit socket of a trap on built-in defaults (see config.runtime_dir)."""
    euid = os.geteuid()
    if euid == 0:
        return "/run/ringtrap/submit.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return os.path.join(xdg, "ringtrap", "submit.sock")
    return f"/tmp/ringtrap-{euid}/submit.sock"


def socket_path(opts: dict[str, list[str]]) -> str:
    """Where to deliver: --socket, else the configuration's, else the default."""
    if "socket" in opts:
        return opts["socket"][0]
    if "config" in opts:
        # only here: loading a configuration costs more than the rest of the client
        from ringtrap import config as configmod

        path = configmod.load(opts["config"][0]).ingest.submit_socket
        if path is None:
            raise UsageError("ingest.submit_socket is off in that configuration")
        return str(path)
    return default_socket()


class _Deadline:
    """The one time budget of a delivery, applied to every socket call."""

    def __init__(self, sock: _socket.socket, seconds: float) -> None:
        self.sock = sock
        self.end = time.monotonic() + seconds

    def arm(self) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)


def deliver(path: str, block: bytes, stdin_fd: int, timeout: float) -> bytes:
    """Send ``block``, the message read from ``stdin_fd`` and its trailer; return the reply.

    Raises OSError (TimeoutError included) when there is no reply to be had.
    A reply the ingest sent before the client finished writing (it refused
    the connection) is still read and returned.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        clock = _Deadline(sock, timeout)
        clock.arm()
        sock.connect(path)
        try:
            clock.arm()
            sock.sendall(block)
            size = 0
            while True:
                chunk = os.read(stdin_fd, _CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                clock.arm()
                sock.sendall(chunk)
            clock.arm()
            sock.sendall(TRAILER + str(size).encode() + b"\n")
            sock.shutdown(_socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the ingest answered early and closed: its reply is waiting
        reply = b""
        while b"\n" not in reply and len(reply) < _MAX_REPLY:
            clock.arm()
            try:
                got = sock.recv(_MAX_REPLY)
            except ConnectionResetError:
                break
            if not got:
                break
            reply += got
        return reply
    finally:
        sock.close()


def exit_code(reply: bytes) -> int:
    """0 for OK (stored) and the ERRs that refuse a message for good, 75 for the rest."""
    if reply.startswith((b"OK ", *FINAL_REFUSALS)) and reply.endswith(b"\n"):
        return EX_OK
    return EX_TEMPFAIL


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns its exit code (0 or 75, never anything else)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
        if "help" in opts:
            sys.stdout.write(USAGE)
            return EX_OK
        timeout = float(opts.get("timeout", [DEFAULT_TIMEOUT])[0])
        if not timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        block = envelope_block(opts)
        path = socket_path(opts)
    except (UsageError, ValueError) as e:
        sys.stderr.write(f"ringtrap submit: {e}\n{USAGE}")
        return EX_TEMPFAIL
    except Exception as e:  # e.g. a broken configuration file: defer, never bounce
        sys.stderr.write(f"ringtrap submit: {e}\n")
        return EX_TEMPFAIL
    try:
        reply = deliver(path, block, 0, timeout)
    except TimeoutError:
        sys.stderr.write(f"ringtrap submit: {path}: no reply within {timeout:g} s\n")
        return EX_TEMPFAIL
    except OSError as e:
        sys.stderr.write(f"ringtrap submit: {path}: {e.strerror or e}\n")
        return EX_TEMPFAIL
    text = reply.decode("utf-8", "replace").strip()
    code = exit_code(reply)
    if code == EX_OK:
        sys.stdout.write(text + "\n")
    else:
        sys.stderr.write(f"ringtrap submit: {text or 'connection closed without a reply'}\n")
    return code


def run(argv: list[str] | None = None) -> None:
    """Entry point: exits 0 or 75, never lets an exception through as status 1."""
    try:
        code = main(argv)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as e:  # KeyboardInterrupt, MemoryError...: defer, never bounce
        try:
            sys.stderr.write(f"ringtrap submit: {e!r}\n")
            sys.stderr.flush()
        finally:
            os._exit(EX_TEMPFAIL)
    os._exit(code)


if __name__ == "__main__":
    run()
