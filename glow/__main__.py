"""`python -m glow ...` is `glow-deblur ...` (glow/cli.py)."""
import sys

from glow.cli import main

sys.exit(main())
