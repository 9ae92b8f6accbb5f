import sys

from chunked.cli.main import main

sys.exit(main())
