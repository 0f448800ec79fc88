"""Print pip constraints that pin every direct dependency of raysearch to its lowest declared version.

Reads pyproject.toml's [project] dependencies: ``name>=X`` becomes ``name==X`` and ``name==X`` stays;
a dependency without a lower bound is an error (its lowest version would be untested). Used by
.ci/lowest-deps to test the declared ranges at their lower ends.
"""

import re
import sys
from pathlib import Path

import tomllib

root = Path(__file__).resolve().parents[1]
deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
pins = []
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(>=|==)\s*([0-9][^,;\s]*)\s*(,.*)?", dep)
    if not m:
        sys.exit(f"pyproject.toml dependency {dep!r} has no lower bound (name>=X or name==X)")
    pins.append(f"{m.group(1)}=={m.group(4)}")
print("\n".join(pins))
