"""``python -m paper_exchange --help``"""

import sys

from .cli import main

sys.exit(main())
