import sys

from beamtwin_cli import main

sys.exit(main())
