"""Same-run A/B of one bench script: an older git revision against the current tree, alternated.

    .venv/bin/python bench/compare.py bench/latency.py --quick                 # HEAD~1 vs this tree, 3 rounds
    .venv/bin/python bench/compare.py --rev main~1 --rounds 4 bench/ingest.py --quick
    .venv/bin/python bench/compare.py --match 'gateway|e2e' bench/ingest.py --quick   # only some figures
    .venv/bin/python bench/compare.py --rev main~1 --new main bench/latency.py --quick  # two commits

Why: "no regression against the previous commit" means little when the two figures come from runs an
hour apart on a shared, noisy machine. This runs both in one sitting, interleaved old, new, old, new...
so slow drift in the machine's load lands on both sides, and shows the spread of each side next to the
ratio so a reader can tell a change from noise.

How:
- the old revision is checked out with `git worktree add --detach` under
  `build/compare/<short sha>/` and removed afterwards (`--keep` leaves it for the next run); the new
  side is this working tree as it is (uncommitted changes included), or `--new REV` checked out the same
  way;
- each side runs *its own* copy of the script, as `<this interpreter> <tree>/<script> ARGS` with the
  tree as working directory and `PYTHONPATH=<tree>`. The benches put their own tree first on sys.path
  and start the gateway with `PYTHONPATH=<tree>`, so each side's gateway, simulator and firmware are that
  tree's. The venv's editable install of `gateway` is only a fallback finder (setuptools appends it
  after the path finder), and the script checks that `import gateway` resolves inside each tree;
- `build/compare/shared` is a symlink to this tree's `../shared` when that exists (or to `--shared DIR`):
  the benches read sample photos from `../shared/photos` relative to their tree, so without it the two
  sides would measure different photos. `--shared` needs `--new` (this tree's `../shared` is fixed);
- each run writes its JSON with `--name _compare-<side>-<round>` (when the script takes `--name`, which
  also keeps it off the script's usual results file), else the JSON files it touched are picked up;
  every numeric leaf of that JSON (except `machine`, `params`, `samples`) is a figure.

Output: per figure the median of the old runs, the median of the new runs, new/old, and each side's
spread ((max - min) / median over its rounds). Whether higher or lower is better depends on the figure
(events/s vs ms): the ratio is printed as is. JSON: bench/results/compare_<script>.json (`--name`).
Loopback only (the benches are); every run has a time limit (`--timeout-s`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SHARED_DIR, machine_info, print_table, tool_versions, write_json  # noqa: E402

SKIP_KEYS = frozenset({"machine", "params", "samples"})
# Fields that name an item of a list of runs (ingest's "runs"), so figures line up across sides even
# if a revision adds or drops a run.
LABEL_KEYS = ("connections", "offered_per_s", "name", "label", "phase")


# --- pure: JSON -> figures -> rows -------------------------------------------------------------


def _label(item: Any, index: int) -> str:
    if isinstance(item, dict):
        parts = [f"{k}={item[k]}" for k in LABEL_KEYS if isinstance(item.get(k), (int, float, str))]
        if parts:
            return ",".join(parts)
    return str(index)


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a bench's JSON as {"a.b[label].c": value} (booleans and the machine,
    params and samples sections are not figures)."""
    out: dict[str, float] = {}
    if isinstance(obj, bool):
        return out
    if isinstance(obj, (int, float)):
        if obj == obj:  # NaN is no figure
            out[prefix] = float(obj)
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not prefix and k in SKIP_KEYS:
                continue
            if k in LABEL_KEYS:  # the label, not a measurement
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{_label(v, i)}]"))
    return out


def spread(values: list[float]) -> float:
    """(max - min) / |median|: how far apart one side's rounds are (NaN if it cannot be told)."""
    if len(values) < 2:
        return float("nan")
    m = statistics.median(values)
    return (max(values) - min(values)) / abs(m) if m else float("nan")


@dataclass
class Row:
    figure: str
    old: list[float]
    new: list[float]

    @property
    def old_median(self) -> float:
        return statistics.median(self.old) if self.old else float("nan")

    @property
    def new_median(self) -> float:
        return statistics.median(self.new) if self.new else float("nan")

    @property
    def ratio(self) -> float:
        o, n = self.old_median, self.new_median
        return n / o if o and o == o and n == n else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "old": self.old,
            "new": self.new,
            "old_median": self.old_median,
            "new_median": self.new_median,
            "new_over_old": round(self.ratio, 3) if self.ratio == self.ratio else None,
            "old_spread": round(spread(self.old), 3) if len(self.old) > 1 else None,
            "new_spread": round(spread(self.new), 3) if len(self.new) > 1 else None,
        }


def compare(old_runs: list[dict[str, Any]], new_runs: list[dict[str, Any]], match: str = "") -> list[Row]:
    """One row per figure found on either side, in the order the new side's JSON has them."""
    pattern = re.compile(match) if match else None
    old_f = [flatten(r) for r in old_runs]
    new_f = [flatten(r) for r in new_runs]
    names: dict[str, None] = {}
    for f in new_f + old_f:
        names.update(dict.fromkeys(f))
    rows = []
    for name in names:
        if pattern is not None and not pattern.search(name):
            continue
        rows.append(Row(name, [f[name] for f in old_f if name in f], [f[name] for f in new_f if name in f]))
    return rows


# --- I/O: the old tree, the runs ----------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def rev_tree(rev: str, base: Path, shared: Path | None) -> tuple[Path, str]:
    """A detached worktree of `rev` under `base/<short sha>` (reused if there from `--keep`)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = base / sha[:12]
    if not (path / ".git").exists():
        base.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(path), sha)
    # ../shared beside the old tree must be the new tree's, or the sides read different photos.
    link = base / "shared"
    if link.is_symlink():
        link.unlink()
    if shared is not None and shared.is_dir():
        link.symlink_to(shared.resolve(), target_is_directory=True)
    return path, sha


def remove_tree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except subprocess.CalledProcessError:
        shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune")


def side_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCELBOX_")}
    env["PYTHONPATH"] = str(tree)
    return env


def gateway_origin(tree: Path) -> str:
    """Where `import gateway` resolves with this side's environment (must be inside `tree`)."""
    r = subprocess.run(
        [sys.executable, "-c", "import gateway, sys; sys.stdout.write(gateway.__file__)"],
        cwd=tree,
        env=side_env(tree),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout.strip()


def takes_name(tree: Path, script: str) -> bool:
    r = subprocess.run(
        [sys.executable, str(tree / script), "--help"],
        cwd=tree,
        env=side_env(tree),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--name" in r.stdout


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc/<pid>/stat's ppid field), children first found first."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the run and everything it started (the managed Mosquitto has a session of its own, so
    a process group is not enough); 15 s later SIGKILL whatever is left."""
    pids = [proc.pid, *descendants(proc.pid)]
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the bench itself
            if not any(Path(f"/proc/{pid}").exists() for pid in pids[1:]) and proc.returncode is not None:
                return
            time.sleep(0.2)


def run_once(
    tree: Path, script: str, args: list[str], name: str | None, timeout_s: float, log: Path
) -> tuple[dict[str, Any] | None, float, int]:
    """Run `script` in `tree`; return (its JSON, wall seconds, exit code)."""
    results = tree / "bench" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("*.json")} if results.is_dir() else {}
    cmd = [sys.executable, str(tree / script), *args]
    if name is not None:
        cmd += ["--name", name]
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=tree, env=side_env(tree), stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = -1
        finally:
            if proc.poll() is None:  # a time-out or an abort: stop the bench, its broker and gateway
                stop_tree(proc)
    wall = time.monotonic() - t0
    if name is not None:
        found = [results / f"{name}.json"]
    else:
        found = (
            [p for p in results.glob("*.json") if before.get(p) != p.stat().st_mtime_ns]
            if results.is_dir()
            else []
        )
    data = None
    for p in found:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if name is not None:
            p.unlink(missing_ok=True)  # its figures are in the comparison's JSON now
        break
    return data, wall, rc


def _photo_source(run: dict[str, Any]) -> str:
    """A run's `params.photos` ("12 UXGA photos from DIR") with DIR resolved: the old side reads
    ../shared through the `build/compare/shared` symlink, the same files under another name."""
    desc = str((run.get("params") or {}).get("photos"))
    head, sep, folder = desc.rpartition(" from ")
    return f"{head}{sep}{Path(folder).resolve()}" if sep else desc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rev", default="HEAD~1", help="the old side: any git revision (default HEAD~1)")
    ap.add_argument("--new", default=None, help="the new side: a git revision (default: this working tree)")
    ap.add_argument(
        "--shared", type=Path, default=None, help="sample data folder for both sides (needs --new)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="old+new pairs (runs alternate old, new, ...)")
    ap.add_argument("--match", default="", help="only figures whose name matches this regex")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="time limit of one run")
    ap.add_argument("--keep", action="store_true", help="keep build/compare/<sha> for the next run")
    ap.add_argument("--name", default=None, help="results file name (default compare_<script>)")
    ap.add_argument("script", help="bench script, relative to the repository root (bench/latency.py)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script (--quick ...)")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    script = a.script
    if not (ROOT / script).is_file():
        ap.error(f"{script}: no such script in {ROOT}")
    base = ROOT / "build" / "compare"
    if a.new and git("rev-parse", f"{a.new}^{{commit}}") == git("rev-parse", f"{a.rev}^{{commit}}"):
        ap.error("--rev and --new are the same commit")
    if a.shared is not None and not a.new:
        ap.error("--shared needs --new: this tree reads its own ../shared")
    if a.shared is not None and not (a.shared / "photos").is_dir():
        ap.error(f"{a.shared}/photos: no such folder")
    shared = a.shared or (SHARED_DIR if SHARED_DIR.is_dir() else None)
    old, sha = rev_tree(a.rev, base, shared)
    new, new_sha = rev_tree(a.new, base, shared) if a.new else (ROOT, git("rev-parse", "HEAD"))
    # SIGTERM (a caller's time limit) unwinds like Ctrl-C, so the worktrees are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sides = {"old": old, "new": new}
    try:
        return _run(a, script, sides, sha, new_sha, base)
    finally:
        if not a.keep:
            for tree in (old, new):
                if tree != ROOT:
                    remove_tree(tree)


def _run(
    a: argparse.Namespace, script: str, sides: dict[str, Path], sha: str, new_sha: str, base: Path
) -> int:
    old, new = sides["old"], sides["new"]
    for side, tree in sides.items():
        if not (tree / script).is_file():
            print(f"{script} does not exist on the {side} side ({tree})", file=sys.stderr)
            return 2
    for side, tree in sides.items():
        origin = gateway_origin(tree)
        if not origin.startswith(str(tree.resolve()) + os.sep):
            print(f"{side}: `import gateway` resolves to {origin!r}, not inside {tree}", file=sys.stderr)
            return 2
    stem = Path(script).stem
    log = base / f"compare_{stem}.log"
    log.write_text("")
    names = {side: takes_name(tree, script) for side, tree in sides.items()}
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    walls: dict[str, list[float]] = {"old": [], "new": []}
    failures: list[dict[str, Any]] = []
    load: list[str] = []
    for rnd in range(1, a.rounds + 1):
        for side in ("old", "new"):
            print(f"round {rnd}/{a.rounds}: {side} ...", flush=True)
            name = f"_compare-{side}-{rnd}" if names[side] else None
            data, wall, rc = run_once(sides[side], script, a.args, name, a.timeout_s, log)
            try:
                load.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
            except OSError:
                pass
            walls[side].append(round(wall, 1))
            if rc != 0 or data is None:
                failures.append({"side": side, "round": rnd, "exit": rc, "json": data is not None})
                print(f"  {side} round {rnd} failed (exit {rc}); see {log}", flush=True)
                continue
            runs[side].append(data)
    rows = compare(runs["old"], runs["new"], a.match)

    def pct(v: float) -> str:
        return f"{v:.0%}" if v == v else "-"

    dirty = new == ROOT and bool(git("status", "--porcelain"))
    new_desc = (
        f"{a.new} ({new_sha[:12]})" if a.new else f"this tree ({new_sha[:12]}{' + changes' if dirty else ''})"
    )
    print(
        f"\n{script} {' '.join(a.args)}: old = {a.rev} ({sha[:12]}), new = {new_desc}; "
        f"{len(runs['old'])} old / {len(runs['new'])} new runs, alternated; medians"
    )
    print_table(
        ["figure", "old", "new", "new/old", "old spread", "new spread"],
        [
            [r.figure, r.old_median, r.new_median, f"{r.ratio:.3f}", pct(spread(r.old)), pct(spread(r.new))]
            for r in rows
        ],
    )
    print(f"load averages after each run: {'; '.join(load)}")
    photos = {s: sorted({_photo_source(r) for r in runs[s]}) for s in runs}
    if photos["old"] and photos["new"] and photos["old"] != photos["new"]:
        print(f"WARNING: the sides used different photos: {photos}", file=sys.stderr)
    out = {
        "bench": "compare",
        "machine": machine_info(**tool_versions()),
        "params": {
            "script": script,
            "args": a.args,
            "rounds": a.rounds,
            "order": "old, new alternated per round",
            "old": {"rev": a.rev, "sha": sha, "tree": str(old)},
            "new": {"rev": a.new or "working tree", "sha": new_sha, "tree": str(new), "dirty": dirty},
            "photos": photos,
            "match": a.match,
        },
        "wall_s": walls,
        "loadavg_after_each_run": load,
        "failures": failures,
        "figures": [r.as_dict() for r in rows],
        "runs": runs,
    }
    path = write_json(a.name or f"compare_{stem}", out)
    print(f"wrote {path}; run log {log}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
