"""``python -m tcm.cli`` == ``tcm``."""

import sys

from tcm.cli.main import main

sys.exit(main())
