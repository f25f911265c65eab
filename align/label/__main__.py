"""`python -m align.label ...` = `align label ...`."""

import sys

from align.cli import main

sys.exit(main(["label", *sys.argv[1:]]))
