"""`python -m jobs.evaluate MODEL`: what truncation costs a model in retrieval quality."""

import sys

from jobs.quality.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
