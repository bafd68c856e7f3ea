"""Print the JSON schema of the pipeline config: `python -m usher_pipeline.config`."""

from __future__ import annotations

import json

from usher_pipeline.config.schema import json_schema

print(json.dumps(json_schema(), indent=2, sort_keys=True))
