"""The README's commands, as the tests run them: a section's one bash block."""

from __future__ import annotations

import re

from playbook.settings import PROJECT_ROOT


def bash_block(heading: str) -> str:
    """The one ```bash block of the README section under `heading` (e.g. "## Connect your BI tool")."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index(heading):]
    section = section[:section.index("\n## ", len(heading))]
    [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
    return block
