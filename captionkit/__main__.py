"""`python -m captionkit SCRIPT [ARGS...]`: the same as the `captionkit` command."""

import sys

from captionkit.launcher import main

sys.exit(main())
