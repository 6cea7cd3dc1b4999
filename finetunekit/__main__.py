"""`python -m finetunekit`: the same as the `finetunekit` command."""

import sys

from finetunekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
