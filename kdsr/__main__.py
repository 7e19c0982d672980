import sys

from kdsr.cli import main

sys.exit(main())
