"""lbsplit: staged (canary) releases on plain nginx."""

import time as _time

__version__ = "0.1.0"
IMPORTED_AT = _time.time()  # when the package started loading: `make bench` splits start-up with it
