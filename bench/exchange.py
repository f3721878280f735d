"""The paper exchange in a process of its own (so its threads don't share the GIL with the
code being measured). Prints its URL on the first line of stdout; stops on SIGINT/SIGTERM.
No state file: the bench never needs the exchange to survive a restart. `--rate-limit 200`
emulates Alpaca's trading-API limit (the suite switches it off where it measures the web
server rather than the broker)."""

import argparse
import sys

from paper_exchange import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, default=0, help="trading-API requests a minute (0: off)")
    args = parser.parse_args()

    def ready(server):
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()

    serve(host="127.0.0.1", port=args.port, state_file=None, ready=ready, rate_limit_per_minute=args.rate_limit or None)


if __name__ == "__main__":
    main()
