import sys

from spegel.cli import main

sys.exit(main())
