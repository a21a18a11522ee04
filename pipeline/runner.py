"""The stage runner: order, content-hash caching, resume, and the manifest.

A stage is a function ``fn(ctx) -> list of files it wrote`` plus what it reads: named files
of the run directory and named sections of the config. Its cache key is the hash of its name
and code version, its config slice, and the *content* (sha256) of every file it reads, so two
different inputs can never share a cache entry. A stage is skipped when the manifest holds
the same key and every file it wrote is still there with the recorded sha256.

The manifest is rewritten (atomically) after every stage: a run killed half-way resumes
at the first unfinished stage. Files are written through ``pipeline.io.atomic_write``.

Under torchrun every rank runs the runner (docs/DISTRIBUTED.md). Rank 0 makes every cache decision,
owns the manifest and runs the ordinary stages while the others wait; a stage marked
``distributed=True`` (the training stages) runs on every rank, on the inputs rank 0 checked. After
each stage every rank has the same StageResult, and the files rank 0 wrote are on disk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import yaml

from pipeline import distributed
from pipeline.config import Config
from pipeline.config.slice import ConfigSlice
from pipeline.errors import UserError
from pipeline.io import atomic_write_json, atomic_write_text, sha256_file
from pipeline.version import __version__

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"


@dataclass
class Context:
    run_dir: Path
    cfg: Config | ConfigSlice  # a stage sees only its declared slice (see ``Context.for_stage``)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def for_stage(self, stage: Stage) -> Context:
        whole = self.cfg if isinstance(self.cfg, Config) else self.cfg.whole()
        return Context(self.run_dir, ConfigSlice(whole, stage.config))


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[Context], list[str]]
    reads: tuple[str, ...]
    config: tuple[str, ...]  # the config slice: section names, dotted subsections, or ALL_CONFIG
    version: str = "1"
    help: str = ""
    # what else decides the stage's results (e.g. the bench targets' runtimes): part of its cache key
    environment: Callable[[Config], str] | None = None
    # under torchrun: run on every rank (a training stage, its loops use DDP) instead of rank 0 only
    distributed: bool = False


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "cached"
    seconds: float
    outputs: list[str]


class Runner:
    def __init__(self, stages: Iterable[Stage]):
        self.stages = list(stages)
        self.names = [s.name for s in self.stages]

    # ------------------------------------------------------------------ manifest
    @staticmethod
    def load_manifest(run_dir: Path) -> dict:
        path = run_dir / MANIFEST
        if not path.exists():
            return {"stages": {}, "files": {}}
        try:
            data = json.loads(path.read_text())
            data.setdefault("stages", {})
            data.setdefault("files", {})
            return data
        except (json.JSONDecodeError, OSError):
            log.warning("%s is unreadable; every stage will run again", path)
            return {"stages": {}, "files": {}}

    def _save_manifest(self, run_dir: Path, manifest: dict, cfg: Config) -> None:
        manifest["pocketkd_version"] = __version__
        manifest["config_hash"] = cfg.hash()
        files = {}
        for name in self.names:
            entry = manifest["stages"].get(name)
            if not entry:
                continue
            for rel, sha in entry["outputs"].items():
                p = run_dir / rel
                files[rel] = {"sha256": sha, "stage": name, "bytes": p.stat().st_size if p.exists() else None}
        manifest["files"] = files
        atomic_write_json(run_dir / MANIFEST, manifest)

    # ------------------------------------------------------------------ keys
    def input_hashes(self, stage: Stage, run_dir: Path) -> dict[str, str]:
        """sha256 of every file the stage reads (patterns expanded, in name order)."""
        out = {}
        for rel in stage.reads:
            if "*" in rel:  # a pattern: every matching file, in name order
                for p in sorted(run_dir.glob(rel)):
                    out[str(p.relative_to(run_dir))] = sha256_file(p)
                continue
            p = run_dir / rel
            if not p.exists():
                raise UserError(
                    f"stage '{stage.name}' needs {p}, which does not exist; run the earlier stages first "
                    f"(drop --only, or use --from)"
                )
            out[rel] = sha256_file(p)
        return out

    def stage_key(self, stage: Stage, run_dir: Path, cfg: Config, hashes: dict[str, str] | None = None) -> str:
        h = hashlib.sha256()
        h.update(f"{stage.name}:{stage.version}:{__version__}".encode())
        h.update(cfg.section_hash(*stage.config).encode())
        if stage.environment is not None:
            h.update(stage.environment(ConfigSlice(cfg, stage.config)).encode())
        for rel, sha in (self.input_hashes(stage, run_dir) if hashes is None else hashes).items():
            h.update(f"{rel}:{sha}".encode())
        return h.hexdigest()

    @staticmethod
    def _is_fresh(entry: dict | None, key: str, run_dir: Path) -> bool:
        if not entry or entry.get("key") != key:
            return False
        for rel, sha in entry.get("outputs", {}).items():
            p = run_dir / rel
            if not p.exists() or sha256_file(p) != sha:
                return False
        return True

    # ------------------------------------------------------------------ run
    def select(self, start: str | None = None, only: list[str] | None = None) -> tuple[list[Stage], set[str]]:
        """The stages to consider, and those forced to run whatever the cache says."""
        for name in [start, *(only or [])]:
            if name is not None and name not in self.names:
                raise UserError(f"unknown stage '{name}'; stages are: {', '.join(self.names)}")
        if only:
            chosen = [s for s in self.stages if s.name in only]
            return chosen, {s.name for s in chosen}
        if start:
            i = self.names.index(start)
            return self.stages, set(self.names[i:])
        return self.stages, set()

    def _decide(self, stage: Stage, run_dir: Path, cfg: Config, manifest: dict, forced: set[str]
                ) -> tuple[str, StageResult | None, dict[str, str]]:
        """(cache key, the cached result or None, input hashes). When the stage must run, its old
        entry is taken out of the manifest in memory (kept aside in ``self._replaced``): the old
        outputs stay on disk until the stage succeeds, so a stage that fails leaves them in place, and
        the manifest on disk still holds their hashes, so a file the failed stage did overwrite can
        never look fresh (its sha256 no longer matches)."""
        hashes = self.input_hashes(stage, run_dir)
        key = self.stage_key(stage, run_dir, cfg, hashes)
        entry = manifest["stages"].get(stage.name)
        if stage.name not in forced and self._is_fresh(entry, key, run_dir):
            log.info("stage %-8s cached (same config and inputs); skipped", stage.name)
            return key, StageResult(stage.name, "cached", 0.0, list(entry["outputs"])), hashes
        self._replaced = getattr(self, "_replaced", {})
        self._replaced[stage.name] = manifest["stages"].pop(stage.name, None)
        return key, None, hashes

    def _restore(self, stage: Stage, manifest: dict | None) -> None:
        """The stage failed: its previous manifest entry comes back (in memory; the file was never changed)."""
        old = getattr(self, "_replaced", {}).pop(stage.name, None)
        if manifest is not None and old is not None:
            manifest["stages"][stage.name] = old

    def _record(self, stage: Stage, key: str, outputs: list[str], seconds: float, run_dir: Path, cfg: Config,
                manifest: dict) -> StageResult:
        manifest["stages"][stage.name] = {
            "key": key,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "outputs": {rel: sha256_file(run_dir / rel) for rel in outputs},
        }
        self._save_manifest(run_dir, manifest, cfg)
        old = getattr(self, "_replaced", {}).pop(stage.name, None) or {}
        for rel in set(old.get("outputs", {})) - set(outputs):  # what the new run no longer writes
            (run_dir / rel).unlink(missing_ok=True)
        log.info("stage %-8s done in %.1fs", stage.name, seconds)
        return StageResult(stage.name, "ran", seconds, list(outputs))

    def _run_here(self, stage: Stage, ctx: Context, manifest: dict, forced: set[str]) -> StageResult:
        """The whole stage in this process: cache decision, the work, the manifest."""
        key, cached, _ = self._decide(stage, ctx.run_dir, ctx.cfg, manifest, forced)
        if cached is not None:
            return cached
        log.info("stage %-8s running", stage.name)
        t0 = time.perf_counter()
        try:
            outputs = stage.fn(ctx.for_stage(stage))
        except BaseException:
            self._restore(stage, manifest)
            raise
        return self._record(stage, key, outputs, time.perf_counter() - t0, ctx.run_dir, ctx.cfg, manifest)

    # ------------------------------------------------------------------ checks before any write
    def verify_inputs(self, run_dir: Path, start: str | None = None, only: list[str] | None = None) -> None:
        """With ``--only``: every file a chosen stage reads from a stage that is not chosen must exist and
        have the sha256 ``manifest.json`` recorded for it. Nothing is written; one UserError line."""
        if not only:
            return
        chosen, _ = self.select(start, only)
        names = {s.name for s in chosen}
        manifest = self.load_manifest(run_dir) if (run_dir / MANIFEST).exists() else {"stages": {}, "files": {}}
        files = manifest.get("files", {})
        first = min(self.names.index(n) for n in names)
        earlier = sorted(f for f, info in files.items()  # every file of the stages before the first chosen one
                         if info.get("stage") in self.names and self.names.index(info["stage"]) < first)
        for stage in chosen:
            for rel in [*stage.reads, *(earlier if stage is chosen[0] else [])]:
                wanted = sorted(f for f in files if fnmatch.fnmatch(f, rel)) if "*" in rel else [rel]
                for f in wanted:
                    writer = (files.get(f) or {}).get("stage") or self._writer(f)
                    if writer in names and self.names.index(writer) < self.names.index(stage.name):
                        continue  # an earlier stage of this --only run writes it afresh
                    p = run_dir / f
                    if not p.is_file():
                        raise UserError(f"--only {stage.name}: needs {p}, which does not exist; run the earlier "
                                        "stages first (drop --only, or use --from)")
                    info = files.get(f)
                    if info is None:
                        raise UserError(f"--only {stage.name}: {p} is not recorded in {run_dir / MANIFEST}; run "
                                        f"the stage that writes it first (e.g. --from {self._writer(f)})")
                    if sha256_file(p) != info.get("sha256"):
                        raise UserError(f"--only {stage.name}: {p} differs from what stage '{info.get('stage')}' "
                                        f"wrote (sha256 does not match {MANIFEST}); re-run it with --from "
                                        f"{info.get('stage')}")

    def _writer(self, rel: str) -> str:
        """The stage that writes ``rel`` by pocketkd's naming (for a file the manifest does not list)."""
        known = {"data.npz": "data", "data.json": "data", "teacher_preds.npz": "teacher", "teacher.json": "teacher",
                 "student_mt.pt": "distill", "distill.json": "distill", "student.pt": "student",
                 "student.json": "student", "export.json": "export"}
        return known.get(rel, rel.split("/")[0] if rel.startswith("bench/") else self.names[0])

    def _run_on_every_rank(self, stage: Stage, ctx: Context, manifest: dict | None, forced: set[str]
                           ) -> StageResult:
        """A training stage under torchrun: rank 0 decides, every rank trains, rank 0 records."""
        key, cached, hashes = distributed.on_main(lambda: self._decide(stage, ctx.run_dir, ctx.cfg, manifest, forced))
        if cached is not None:
            return cached
        # every rank must read the files rank 0 checked: --out is shared by every node (same path)
        problem = None
        if not distributed.is_main():
            for rel, sha in hashes.items():
                p = ctx.run_dir / rel
                if not p.exists() or sha256_file(p) != sha:
                    problem = (f"rank {distributed.rank()} " + (f"does not see {p}, which rank 0 wrote" if not p.exists()
                               else f"sees a different {p} from the one rank 0 wrote")
                               + ": under torchrun, --out must be a directory every node shares "
                               "(the same path on a shared file system, e.g. NFS)")
                    break
        problems = [p for p in distributed.gather(problem) if p]
        if problems:
            raise UserError(problems[0])
        log.info("stage %-8s running on %d processes", stage.name, distributed.world_size())
        t0 = time.perf_counter()
        try:
            outputs, failure = stage.fn(ctx.for_stage(stage)), None
        except Exception as exc:
            if not distributed.is_main():
                raise
            outputs, failure = [], exc
        seconds = time.perf_counter() - t0

        def record() -> StageResult:
            if failure is not None:
                self._restore(stage, manifest)
                raise failure
            return self._record(stage, key, outputs, seconds, ctx.run_dir, ctx.cfg, manifest)

        return distributed.on_main(record)  # the others wait here until rank 0 has written everything

    def run(
        self,
        run_dir: Path,
        cfg: Config,
        force: bool = False,
        start: str | None = None,
        only: list[str] | None = None,
        on_stage: Callable[[StageResult], None] | None = None,
    ) -> tuple[list[StageResult], Context]:
        distributed.init_from_env()
        multi = distributed.collective()  # every rank of a torchrun job is here
        chosen, forced = self.select(start, only)
        if force:
            forced = {s.name for s in chosen}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # rank 0
        manifest = self.load_manifest(run_dir) if distributed.is_main() else None
        ctx = Context(run_dir=run_dir, cfg=cfg)
        results = []
        for stage in chosen:
            if not multi:
                res = self._run_here(stage, ctx, manifest, forced)
            elif stage.distributed:
                res = self._run_on_every_rank(stage, ctx, manifest, forced)
            else:  # rank 0 only; the others wait for its result (or its error)
                res = distributed.on_main(lambda s=stage: self._run_here(s, ctx, manifest, forced))
            results.append(res)
            if on_stage:
                on_stage(res)
        return results, ctx
