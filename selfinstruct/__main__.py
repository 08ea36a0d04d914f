"""``python -m selfinstruct``: the CLI, with Ctrl-C during start-up ending quietly."""

import signal
import sys


def run() -> int:
    try:
        from .cli import main

        return main()
    except KeyboardInterrupt:
        sys.stderr.write("selfinstruct: interrupted\n")
        return 128 + signal.SIGINT


if __name__ == "__main__":
    raise SystemExit(run())
