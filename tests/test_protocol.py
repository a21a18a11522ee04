"""The benchmark protocol (benchmarks/protocol.py): disjoint seeds, selection on validation only,
paired intervals that agree with scipy's t distribution and with a bootstrap."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import protocol  # noqa: E402


def test_selection_and_report_seeds_are_disjoint_and_enough():
    assert not set(protocol.SELECTION_SEEDS) & set(protocol.REPORT_SEEDS)
    assert len(protocol.REPORT_SEEDS) >= 10
    line = protocol.describe_seeds()
    assert str(list(protocol.SELECTION_SEEDS)) in line and str(list(protocol.REPORT_SEEDS)) in line


@pytest.mark.parametrize("df", [1, 2, 5, 9, 29, 30, 31, 45, 120])
def test_t_quantile_matches_scipy(df):
    assert protocol.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=0.0025)


def test_paired_interval_is_scipys_paired_t_interval():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.02, 0.03, 12)
    method = base - 0.002 + rng.normal(0, 0.001, 12)
    p = protocol.paired(method, base)
    d = method - base
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert (p.ci_low, p.ci_high) == pytest.approx((lo, hi), abs=1e-5)
    assert p.boot_low < p.mean < p.boot_high
    assert p.wins == int(np.sum(d < 0)) and p.n == 12
    assert p.verdict == ("better" if hi < 0 else "no difference shown")
    assert protocol.paired(base, method).verdict in ("worse", "no difference shown")


def test_pairing_removes_the_seed_effect():
    """The same +1 % effect on very different seeds: unpaired stds overlap, the paired interval does not."""
    base = np.array([0.010, 0.020, 0.030, 0.040, 0.015, 0.025, 0.035, 0.012, 0.022, 0.032])
    worse = base * 1.01
    p = protocol.paired(worse, base)
    assert p.ci_low > 0 and p.verdict == "worse" and p.wins == 0
    assert p.relative == pytest.approx(0.01, rel=1e-6)


def test_paired_refuses_nan_and_unequal_lists():
    with pytest.raises(ValueError, match="non-finite"):
        protocol.paired([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="equal"):
        protocol.paired([0.1, 0.2], [0.1])


def test_select_uses_only_selection_seeds_and_the_lowest_mean():
    seen = []

    def score(setting, seed):
        seen.append(seed)
        return {"a": 1.0, "b": 0.5, "c": 0.7}[setting] + seed * 1e-3

    best, means = protocol.select(["a", "b", "c"], score)
    assert best == "b" and set(means) == {"a", "b", "c"}
    assert set(seen) == set(protocol.SELECTION_SEEDS)


def test_an_incumbent_stays_unless_the_challenger_wins_on_every_unit_clearly():
    """Rule 3: the lowest mean replaces the shipped default only when its paired difference over the
    selection units has a 95 % interval below 0."""
    units = [(seed, p) for seed in protocol.SELECTION_SEEDS for p in (0.1, 0.2, 0.4)]
    noise = {u: 0.01 * ((i * 7) % 5 - 2) for i, u in enumerate(units)}  # unit-to-unit spread, shared
    slight = lambda s, u: {"old": 1.0, "new": 0.999 + 3 * noise[u] * (u[1] - 0.2)}[s] + noise[u]  # noqa: E731
    clear = lambda s, u: (  # noqa: E731
        {"old": 1.0, "new": 0.9}[s] + noise[u] + (0.002 * (u[0] % 3) if s == "new" else 0))
    assert protocol.select(["old", "new"], slight, units)[0] == "new"  # no incumbent: the minimum
    assert protocol.select(["old", "new"], slight, units, incumbent="old")[0] == "old"
    assert protocol.challenge(slight, "new", "old", units).verdict == "no difference shown"
    assert protocol.select(["old", "new"], clear, units, incumbent="old")[0] == "new"
    with pytest.raises(ValueError, match="incumbent"):
        protocol.select(["old", "new"], clear, units, incumbent="gone")


def test_validation_score_is_robust_to_outlier_rows_and_rejects_nan():
    y = np.zeros(100)
    y[:10] = 50.0  # outlier labels in validation
    good, bad = np.zeros(100), np.full(100, 0.3)
    assert protocol.validation_score(good, y) < protocol.validation_score(bad, y)
    assert protocol.validation_score(np.full(100, np.nan), y) == float("inf")


def test_validation_score_ignores_how_far_off_the_outlier_rows_are():
    """The lower-half MAE is decided by the rows whose labels are right (fewer than half are outliers):
    moving the outlier labels from 5 to 500 changes nothing, while a worse fit of the clean rows shows."""
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.1, 200)
    outliers = rng.random(200) < 0.3
    near, far = np.where(outliers, 5.0, y), np.where(outliers, 500.0, y)
    good, worse = np.zeros(200), np.full(200, 0.05)
    assert protocol.validation_score(good, near) == protocol.validation_score(good, far)
    assert protocol.validation_score(good, near) < protocol.validation_score(worse, near)


def test_a_task_run_one_kind_of_error_at_a_time_merges_into_one_result(tmp_path):
    """benchmarks/tor_settings.py --tasks pose --kinds K: each run keeps the kinds the saved result has
    and it lacks, replaces the kinds it ran, and adds up the runs' minutes; other seeds start afresh."""
    import json

    import tor_settings

    def run(kinds, minutes, value, report=(0, 1)):
        return {"kinds": kinds, "minutes": minutes, "report_seeds": list(report), "selection_seeds": [100],
                "report": [{"kind": k, "seed": s, "v": value} for k in kinds for s in report],
                "selection": [{"kind": k, "seed": 100, "v": value} for k in kinds],
                "chosen": {f"pose/{k}": "alpha 0.5" for k in kinds}, "duels": {f"pose/{k}": None for k in kinds}}

    path = tmp_path / "tor_settings_pose.json"
    for kinds, minutes, value in ((["near"], 10.0, 1), (["gaussian"], 9.0, 2), (["near"], 11.0, 3)):
        out = tor_settings.merged(path, run(kinds, minutes, value))
        path.write_text(json.dumps(out))
    assert out["kinds"] == ["gaussian", "near"]  # in the benchmark's order, each once
    assert out["minutes"] == pytest.approx(20.0)  # gaussian 9 + the second near run 11
    assert sorted((r["kind"], r["v"]) for r in out["report"]) == [("gaussian", 2)] * 2 + [("near", 3)] * 2
    assert set(out["chosen"]) == {"pose/gaussian", "pose/near"}
    assert "one run per kind" in tor_settings._minutes(out)
    fresh = tor_settings.merged(path, run(["gross"], 5.0, 4, report=(0, 1, 2)))  # other report seeds
    assert fresh["kinds"] == ["gross"] and fresh["minutes"] == 5.0


def test_pose_seeds_run_one_at_a_time_and_report_the_complete_ones():
    """benchmarks/pose.py --seeds S: a run replaces its seeds' rows and keeps the others; the
    report covers the seeds every student x method has a row of; rows of a changed config are dropped."""
    import pose

    digests = {st: f"cfg-{i}" for i, st in enumerate(pose.STUDENTS)}

    def rows(seeds, students, value):
        out = [{"seed": s, "what": "teacher", "v": value} for s in seeds]
        return out + [{"seed": s, "what": f"{st} {m}", "student": st, "method": m, "v": value}
                      for s in seeds for st in students for m in pose.METHODS]

    def run(seeds, students, minutes):
        return {"seeds": seeds, "students": students, "minutes": minutes, "workers": 2, "machine": "m"}

    both, first = list(pose.STUDENTS), list(pose.STUDENTS)[:1]
    acc = pose.merge_accuracy(None, rows([0, 1], both, 1), run([0, 1], both, 15.0), digests)
    assert acc["seeds"] == [0, 1]
    acc = pose.merge_accuracy(acc, rows([2], first, 2), run([2], first, 5.0), digests)
    assert acc["seeds"] == [0, 1]  # seed 2 lacks the second student's rows
    acc = pose.merge_accuracy(acc, rows([1], both, 3), run([1], both, 9.0), digests)
    assert acc["seeds"] == [0, 1] and len(acc["rows"]) == 2 * (1 + len(both) * 3) + 1 + 3
    assert {r["v"] for r in acc["rows"] if r["seed"] == 1} == {3}  # replaced, not duplicated
    assert {r["v"] for r in acc["rows"] if r["seed"] == 0} == {1}  # kept
    assert [r["minutes"] for r in acc["runs"]] == [15.0, 5.0, 9.0]
    note = pose.runs_note(acc)
    assert "3 runs" in note and "seeds 2 (" in note and "seeds 1 9.0 min" in note
    changed = {**digests, both[1]: "cfg-new"}  # the second student's config changed: its old rows go
    acc = pose.merge_accuracy(acc, rows([2], both[1:], 4), run([2], both[1:], 4.0), changed)
    assert acc["seeds"] == [2]
    assert all(r["config"] == "cfg-new" for r in acc["rows"] if r.get("student") == both[1])


@pytest.mark.parametrize("seeds, says", [("a,1", "not a comma-separated list of integers"),
                                         ("42", "are not report seeds")])
def test_pose_benchmark_refuses_a_bad_seed_in_one_line(seeds, says):
    import subprocess

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "pose.py"
    r = subprocess.run([sys.executable, str(bench), "--seeds", seeds, "--no-write"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_teacher_loss_parts_run_apart_and_render_together(tmp_path, monkeypatch):
    """benchmarks/teacher_loss.py --part toy / --part digits: a part's run keeps the other part's saved
    rows and minutes (same report seeds), replaces its own, and a saved run of other seeds is ignored."""
    import json

    import teacher_loss

    monkeypatch.setattr(teacher_loss, "RESULTS", tmp_path)

    def rows(part, v):
        return [{"setting": st, "seed": 0, "v": v} for st in teacher_loss.PARTS[part]]

    got, minutes = teacher_loss.with_saved_parts(rows("toy", 1), "toy", 9.0, [0])
    assert minutes == {"toy": 9.0}  # nothing saved yet
    (tmp_path / "teacher_loss.json").write_text(json.dumps({"rows": got, "minutes": minutes, "report_seeds": [0]}))
    got, minutes = teacher_loss.with_saved_parts(rows("digits", 2), "digits", 7.0, [0])
    assert minutes == {"toy": 9.0, "digits": 7.0}
    assert sorted((r["setting"], r["v"]) for r in got) == sorted(
        [(st, 1) for st in teacher_loss.TOY] + [(st, 2) for st in teacher_loss.DIGITS])
    (tmp_path / "teacher_loss.json").write_text(json.dumps({"rows": got, "minutes": minutes, "report_seeds": [0]}))
    got, minutes = teacher_loss.with_saved_parts(rows("toy", 3), "toy", 8.0, [0])
    assert minutes == {"digits": 7.0, "toy": 8.0} and {r["v"] for r in got} == {2, 3}
    got, minutes = teacher_loss.with_saved_parts(rows("toy", 4), "toy", 8.0, [0, 1])  # other report seeds
    assert minutes == {"toy": 8.0} and {r["v"] for r in got} == {4}
