"""``python -m fastlr``: the same as the ``fastlr`` console script."""

import sys

from fastlr._tools.cli import main

sys.exit(main())
