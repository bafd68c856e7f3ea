import time

import polars  # noqa: F401 - a plain job script reads and writes its tables with polars

time.sleep(float(snakemake.params.seconds))
open(snakemake.output[0], "w").close()
