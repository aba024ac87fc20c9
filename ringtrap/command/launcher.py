"""The ``ringtrap`` command's entry point: a fast path for ``ringtrap submit``.

The MTA runs ``ringtrap submit`` once per message, so it must not pay for the
rest of the command line (argparse, the configuration module): it is handed
straight to :mod:`ringtrap.command.submit`, which imports next to nothing.  Every
other subcommand goes to :func:`ringtrap.command.cli.main`.
"""

import sys


def main() -> int:
    """Dispatch ``submit`` without importing the CLI; everything else to the CLI."""
    if sys.argv[1:2] == ["submit"]:
        from ringtrap.command import submit

        submit.run(sys.argv[2:])  # exits 0 or 75
    from ringtrap.command.cli import main as cli_main

    return cli_main()
