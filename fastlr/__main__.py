"""``python -m fastlr``: the same as the ``fastlr`` console script."""

import sys

from fastlr.cli import main

sys.exit(main())
