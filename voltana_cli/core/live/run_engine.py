"""Entry point of one emulated engine process: ``python -m voltana_cli.core.live.run_engine`` (``voltana serve
--engine sim`` starts one per instance; kept apart from ``engine`` so that running it does not import the
module twice)."""

import sys

from voltana_cli.core.live.engine import main

if __name__ == "__main__":
    sys.exit(main())
