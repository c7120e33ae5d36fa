"""captionkit command-line scripts (run them by path: python finetune/<script>.py --help)."""

import sys

from . import _bootstrap

sys.modules.setdefault("_bootstrap", _bootstrap)  # `python -m finetune.<script>` finds the scripts' `import _bootstrap`
