"""`python -m usher_pipeline`: the `usher-pipeline` command."""

import sys

from usher_pipeline.cli import main

sys.exit(main())
