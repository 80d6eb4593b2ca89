import sys

from benchmarks.load.cli import main

# ASV imports every module under benchmarks/ to discover benchmarks, this one too.
if __name__ == "__main__":
    sys.exit(main())
