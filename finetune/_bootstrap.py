"""Put this checkout's root first on sys.path, so its `library` wins over sd-scripts' one on PYTHONPATH."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
