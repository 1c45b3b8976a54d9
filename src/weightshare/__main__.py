import sys

from weightshare.cli import main

sys.exit(main())
