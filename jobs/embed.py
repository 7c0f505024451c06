"""`python -m jobs.embed INPUT OUTPUT MODEL [DIM]`: embed a chunked corpus into partitioned Parquet.

Exit codes: 0 every row written or rejected with a reason; 2 refused before any work (bad
settings, unknown model, truncation policy, unusable INPUT/OUTPUT); 3 more rows rejected than
--max-rejected-fraction allows; 1 the run failed.
"""

import sys

from jobs.pipeline.job import main

if __name__ == "__main__":
    sys.exit(main())
