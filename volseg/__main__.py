import sys

from volseg.cli.main import main

sys.exit(main())
