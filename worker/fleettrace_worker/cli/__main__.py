import sys

from fleettrace_worker.cli import main

sys.exit(main())
