"""Flower's settings file, named by `--conf` in the Procfile and compose.yaml.

The login comes from FLOWER_BASIC_AUTH in the environment (`user:password`, several
separated by commas), which Flower reads itself: never from the command line, where
`ps` shows it to every user of the host. Without it Flower would serve anyone, so it
does not start.
"""

import os

if not os.environ.get("FLOWER_BASIC_AUTH", "").strip():
    raise SystemExit("Flower needs FLOWER_BASIC_AUTH=user:password in its environment.")
