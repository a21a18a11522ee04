"""Config: defaults, overrides, and one clear line (exit 2, nothing written) for every user mistake."""

import pytest
import yaml

from pipeline.config import Config, config_reference, load_config
from pipeline.errors import UserError
from tests.conftest import run_cli


def test_default_config_loads_and_matches_schema_types():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.distill.method == "tor_mt"
    assert cfg.export.opset >= 17


def test_set_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["teacher.train.epochs=7", "data.noise.outlier_fraction=0.3", "distill.baselines=[kd]"])
    assert cfg.teacher.train.epochs == 7
    assert cfg.data.noise.outlier_fraction == 0.3
    assert cfg.distill.baselines == ["kd"]


def test_file_merges_over_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  noise:\n    sigma: 0.05\n")
    cfg = load_config(p)
    assert cfg.data.noise.sigma == 0.05
    assert cfg.data.noise.outlier_fraction == load_config().data.noise.outlier_fraction


def test_config_hash_changes_with_content():
    assert load_config().hash() == load_config().hash()
    assert load_config().hash() != load_config(None, ["seed=1"]).hash()


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("data.noise.outlier_fraction=1.5", ["data.noise.outlier_fraction", "1.5", "less than or equal to 1"]),
        ("teacher.train.epochs=-3", ["teacher.train.epochs", "-3", "greater than or equal to 1"]),
        ("teacher.train.epochs=ten", ["teacher.train.epochs", "valid integer"]),
        ("data.bogus=1", ["unknown key 'data.bogus'", "allowed keys here", "n_train"]),
        ("distill.method=nope", ["distill.method", "unknown method 'nope'", "tor_mt"]),
        ("student.keep_head=both", ["student.keep_head", "'label'", "'teacher'"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(setting, expected):
    with pytest.raises(UserError) as info:
        load_config(None, [setting])
    for piece in expected:
        assert piece in str(info.value)


def _assert_clean_failure(proc, out_dir, *pieces):
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for piece in pieces:
        assert piece in lines[0]
    assert not out_dir.exists(), "nothing may be written on a config error"


def test_cli_missing_config_file(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--config", tmp_path / "missing.yaml", "--out", out)
    _assert_clean_failure(proc, out, "missing.yaml", "does not exist")


def test_cli_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  n_train: [1,\n")
    out = tmp_path / "out"
    proc = run_cli("run", "--config", bad, "--out", out)
    _assert_clean_failure(proc, out, "bad.yaml", "not valid YAML", "line")


def test_cli_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"teacher": {"hiddne": [4]}}))
    out = tmp_path / "out"
    proc = run_cli("run", "--config", p, "--out", out)
    _assert_clean_failure(proc, out, "teacher.hiddne", "hidden")


@pytest.mark.parametrize(
    "sets, pieces",
    [
        (["data.noise.outlier_fraction=1.5"], ["data.noise.outlier_fraction", "1.5"]),
        (["distill.train.epochs=-1"], ["distill.train.epochs", "-1"]),
        (["data.n_train=lots"], ["data.n_train", "integer"]),
        (["data.n_train"], ["KEY=VALUE"]),
    ],
)
def test_cli_bad_set_values(tmp_path, sets, pieces):
    out = tmp_path / "out"
    args = [a for s in sets for a in ("--set", s)]
    proc = run_cli("run", *args, "--out", out)
    _assert_clean_failure(proc, out, *pieces)


def test_cli_student_too_big_for_teacher(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--set", "teacher.hidden=[16]", "--set", "student.hidden=[64,64]", "--out", out)
    _assert_clean_failure(proc, out, "student.max_param_ratio")


def test_cli_unknown_stage(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--from", "bogus", "--out", out)
    _assert_clean_failure(proc, out, "bogus", "teacher")


def test_reference_lists_every_leaf_key():
    ref = config_reference()
    for key in ("data.noise.outlier_fraction", "distill.tor.delta_rule", "export.int8.calibrate_method",
                "bench.runs", "student.keep_head"):
        assert f"`{key}`" in ref
