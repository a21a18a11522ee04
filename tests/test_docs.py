"""The docs that are generated or executed stay true: the config reference, the README commands and the
README's model sizes."""

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


def test_readme_states_the_default_models_sizes():
    """The README's parameter counts are those of the networks the shipped default builds, and the
    default student fits the config's own size limit."""
    from pipeline.checkpoints import build_deployed, build_student, build_teacher
    from pipeline.config import load_config

    cfg = load_config()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    teacher, student, deployed = (count(build(cfg, (1,), 1)) for build in (build_teacher, build_student,
                                                                             build_deployed))
    readme = (ROOT / "README.md").read_text()
    assert f"({teacher:,} parameters)" in readme
    assert f"({student:,} parameters: 1/{round(teacher / student)} of the teacher" in readme
    assert f"({deployed:,} parameters)" in readme
    assert student <= cfg.student.max_param_ratio * teacher
