"""`python -m align.preferences.label ...` = `align label ...`."""

import sys

from align.cli import main

sys.exit(main(["label", *sys.argv[1:]]))
