"""Entry point of one controller sidecar process: ``python -m voltana_cli.core.live.run_sidecar`` (``voltana
serve`` starts one per instance; kept apart from ``sidecar`` so that running it does not import the module
twice)."""

import sys

from voltana_cli.core.live.sidecar import main

if __name__ == "__main__":
    sys.exit(main())
