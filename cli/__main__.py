import sys

from hadskip.cli.main import main

sys.exit(main())
