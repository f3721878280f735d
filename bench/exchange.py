"""The paper exchange in a process of its own (so its threads don't share the GIL with the
code being measured). Prints its URL on the first line of stdout; stops on SIGINT/SIGTERM.
No state file: the bench never needs the exchange to survive a restart."""

import argparse
import sys

from paper_exchange import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    def ready(server):
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()

    serve(host="127.0.0.1", port=args.port, state_file=None, ready=ready)


if __name__ == "__main__":
    main()
