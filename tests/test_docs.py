"""The docs that are generated or executed stay true: the config reference and the README commands."""

import re

from pipeline.config import config_reference
from tests.conftest import ROOT


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config_reference(), (
        "regenerate with: python -m pipeline config --reference > docs/CONFIG.md"
    )


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", readme, re.S)
    assert block and "pytest" in block.group(1)
    assert "python -m pipeline run" in readme
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
