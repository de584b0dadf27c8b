"""Import boundaries: the API process loads no workflow or activity code, nor what only they need.

The API starts and reads jobs by name (``core.ids.AGENT_WORKFLOW_TYPE`` and its query and update
names), so importing it must not pull in the workflow sandbox's modules, the activities, the
model client, the tokenizer or numpy (seconds of start-up and tens of MB per API process).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

FORBIDDEN = ("workflows", "activities", "numpy", "tiktoken", "openai", "sklearn")


def test_importing_the_api_loads_no_workflow_activity_or_model_code() -> None:
    script = (
        "import json, sys; import api.app; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
