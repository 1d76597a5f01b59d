import sys

from fluxcore.cli import main

sys.exit(main())
