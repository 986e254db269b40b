"""Mutation testing per package with mutmut: how many planted bugs do the fast tests catch?

    python tools/mutants.py models diffusion        # chosen packages
    python tools/mutants.py --changed main          # only files changed since `main`
    python tools/mutants.py                         # every package below
    python tools/mutants.py --resume generation     # continue a run that was stopped
    python tools/mutants.py --recheck generation    # its survivors again, after tests were written for them
    python tools/mutants.py --recheck data --only 'class_table|label_to_ids'   # only those a new test aims at

Each package is mutated in its own copy of the working tree (`runs/mutants/<package>/`),
with the fast tests that cover it, one torch thread per child. The kill rate of each run
replaces that package's row in `tools/results_mutants.md`; surviving mutants are listed
there, those judged equivalent (no behaviour can tell them apart) with their reason from
`tools/mutants_equivalent.yaml`.

Statements that only word an error (`raise ...(...)`) or print are not mutated: their text
is checked by the tests that match it, and the condition that leads to them is mutated.
Progress bars (`tqdm(...)`) are not mutated either: they only draw, and a bar switched on
inside mutmut's forked test processes hangs them (a time-out that would count as a kill).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "tools" / "results_mutants.md"
EQUIVALENT = REPO / "tools" / "mutants_equivalent.yaml"

# package -> (files to mutate, test files that cover them, words of test names to leave out)
PACKAGES: dict[str, tuple[list[str], list[str], str]] = {
    "models": (["sdm/models/*.py"], ["tests/models/test_models.py", "tests/models/test_blocks.py"], ""),
    "diffusion": (["sdm/diffusion/*.py"], ["tests/diffusion/test_diffusion.py"], ""),
    "data": (
        ["sdm/data/rows.py", "sdm/data/transforms.py", "sdm/data/datamodule.py",
         "sdm/data/prepare.py", "sdm/data/classes.py", "sdm/data/pictures.py", "sdm/cli/prepare.py"],
        ["tests/data/test_class_tables.py", "tests/data/test_data.py", "tests/data/test_data_edges.py",
         "tests/data/test_datamodule_edges.py", "tests/data/test_data_mixing.py", "tests/data/test_folders.py"],
        "cli",
    ),
    # the module's survivors re-run every fit that covers them: its own run fits one session
    "checkpoints": (
        ["sdm/checkpoint/files.py", "sdm/training/ema.py"],
        ["tests/checkpoint/test_checkpoints.py", "tests/training/test_training.py"],
        "cli multirun sigkill",
    ),
    "module": (
        ["sdm/training/module.py"],
        ["tests/training/test_recipe.py", "tests/training/test_module.py", "tests/training/test_training.py"],
        "cli multirun sigkill",
    ),
    "generation": (
        ["sdm/generation/settings.py", "sdm/generation/weights.py",
         "sdm/generation/layout.py", "sdm/generation/grids.py", "sdm/generation/run.py"],
        ["tests/generation/test_generate.py", "tests/generation/test_generate_edges.py", "tests/generation/test_generate_shards.py",
         "tests/generation/test_generate_masks.py", "tests/generation/test_generate_records.py",
         "tests/generation/test_generate_hardness.py"],
        "cli",
    ),
    # which masks a generation uses: splits, another source, variations
    "masks": (
        ["sdm/generation/masks.py"],
        ["tests/generation/test_generate_masks.py", "tests/generation/test_generate_edges.py", "tests/generation/test_generate.py"],
        "cli",
    ),
    # sharding over processes and nodes, export as a Hub-schema dataset, real + synthetic mixing
    "augmentation": (
        ["sdm/generation/shards.py", "sdm/generation/processes.py", "sdm/generation/export.py", "sdm/data/mixing.py",
         "sdm/generation/command.py", "sdm/cli/export.py"],
        ["tests/generation/test_generate_shards.py", "tests/generation/test_generate_export.py", "tests/data/test_data_mixing.py"],
        "cli",  # tests/generation/test_generate_processes.py stays out: its spawned children outlive a time-out
    ),
    "metrics": (
        ["sdm/segmenter/scores.py", "sdm/metrics/distances.py", "sdm/metrics/diversity.py",
         "sdm/metrics/image_sets.py", "sdm/metrics/scoring.py", "sdm/training/validation.py", "sdm/cli/pipeline.py"],
        ["tests/metrics/test_metrics.py", "tests/metrics/test_evaluation.py", "tests/cli/test_pipeline.py"],
        "cli",
    ),
    # the instrument's calibration: the blur control and the verdict (a focused re-run of scoring.py)
    "instrument": (
        ["sdm/segmenter/controls.py", "sdm/metrics/scoring.py"],
        ["tests/metrics/test_evaluation.py", "tests/metrics/test_evaluation_writes.py"],
        "cli chromium",
    ),
    "report": (
        ["sdm/metrics/report.py", "sdm/metrics/report_html.py", "sdm/metrics/pictures.py",
         "sdm/metrics/evaluation.py", "sdm/metrics/weights.py", "sdm/cli/weights.py",
         "sdm/segmenter/networks.py", "sdm/segmenter/cache.py", "sdm/segmenter/fit.py", "sdm/cli/segmenter.py"],
        ["tests/metrics/test_metrics.py", "tests/metrics/test_evaluation.py", "tests/segmenter/test_segmenter.py"],
        "cli",
    ),
    # surviving faults: content digests, atomic writes and leftovers, stop signals, SLURM checks
    "faults": (
        ["sdm/core/integrity.py", "sdm/core/atomic.py", "sdm/core/stopping.py", "sdm/cluster/launcher.py", "sdm/cluster/watch.py"],
        ["tests/training/test_faults.py", "tests/core/test_fault_units.py", "tests/checkpoint/test_checkpoints.py"],
        "cli tmpfs",
    ),
    # the interactive page's mask rules: strokes to classes, uploads, the zip (the page itself: tests/app, slow)
    "app": (["sdm/app/masks.py"], ["tests/app/test_app_masks.py"], ""),
    # the published checkpoints: key names, qkv order, layout from shapes, the CLI
    "convert": (
        ["sdm/checkpoint/official/*.py", "sdm/cli/convert.py"],
        ["tests/checkpoint/test_convert_official.py"],
        "python_dash_m sample_py",
    ),
}
SKIP_PATTERNS = [r"^\s*raise \w+\(", r"^\s*print\(", r"^\s*warnings\.warn\(", r"\btqdm\("]
NOTES = "<!-- notes: kept as written -->"
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if (REPO / line).is_symlink() or (REPO / line).is_file()]


def changed_files(base: str) -> list[str]:
    out = subprocess.run(["git", "diff", "--name-only", base, "--", "sdm"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    untracked = subprocess.run(["git", "ls-files", "-o", "--exclude-standard", "sdm"], cwd=REPO,
                               check=True, capture_output=True, text=True).stdout.split()
    return sorted({f for f in out + untracked if f.endswith(".py") and (REPO / f).is_file()})


def package_of(path: str) -> str | None:
    from fnmatch import fnmatch

    return next((name for name, (globs, _, _) in PACKAGES.items() if any(fnmatch(path, g) for g in globs)), None)


def copy_tree(work: Path) -> None:
    """A fresh copy of the working tree's tracked and new files in `work`."""
    shutil.rmtree(work, ignore_errors=True)
    for rel in tracked_files():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_symlink():  # sdm/conf -> ../conf, docs/experiments -> ../experiments: links stay links
            target.symlink_to(os.readlink(REPO / rel))
        else:
            shutil.copy2(REPO / rel, target)


def left_out(node_id: str, words: list[str]) -> bool:
    """Whether a test's function name holds one of `words` between underscores (`cli` leaves out
    `test_prepare_cli` but neither `test_clipping` nor any test under tests/cli/, which pytest's
    `-k` would match by its folder's name)."""
    name = node_id.split("::")[-1].split("[")[0]
    return any(re.search(rf"(^|_){re.escape(word)}(_|$)", name) for word in words)


def test_selection(tests: list[str], deselect: str) -> list[str]:
    """The fast tests of `tests`, less those whose names hold a word of `deselect` ("cli multirun")."""
    files = [t for t in tests if (REPO / t).is_file()]
    selection = [*files, "-m", "not slow", "-p", "no:cacheprovider"]
    if not deselect:
        return selection
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *selection], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, **MUTMUT_ENV})
    node_ids = [line for line in listed.stdout.splitlines() if "::" in line]
    if listed.returncode != 0 or not node_ids:
        raise SystemExit(f"error: could not list the tests of {files}:\n{listed.stdout[-2000:]}{listed.stderr[-2000:]}")
    return selection + [arg for node in node_ids if left_out(node, deselect.split()) for arg in ("--deselect", node)]


def prepare_copy(work: Path, only: list[str], tests: list[str], deselect: str) -> None:
    """A fresh copy of the working tree whose pyproject tells mutmut what to do."""
    copy_tree(work)
    selection = test_selection(tests, deselect)
    config = {
        "source_paths": ["sdm"],
        "only_mutate": only,
        "also_copy": ["conf", "sdm/conf", "tests", "train.py", "sample.py"],  # mutmut skips the sdm/conf link
        "pytest_add_cli_args_test_selection": selection,
        "do_not_mutate_patterns": SKIP_PATTERNS,
        "timeout_multiplier": 6.0,
        "timeout_constant": 10.0,
    }
    pyproject = work / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.mutmut]\n" + "".join(
        f"{key} = {toml_value(value)}\n" for key, value in config.items()))
    tomllib.loads(pyproject.read_text())  # fail here, not inside mutmut


def toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value + "'"  # literal string: regexes keep their backslashes
    return str(value)


MUTMUT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
              "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}


def run_mutmut(work: Path, children: int) -> None:
    """A full `mutmut run` in `work`, its output in `work/mutmut.log`."""
    env = {**os.environ, **MUTMUT_ENV}
    log = work / "mutmut.log"
    with log.open("w") as handle:
        code = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)], cwd=work,
                              env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"error: mutmut run failed in {work} (exit {code}); end of {log}:\n{tail}")


def recheck_timeouts(work: Path) -> None:
    """Run the timed-out mutants again, one at a time: a time-out counts as a kill, and other work
    on the machine makes slow tests run out of their CPU budget (a CPU-time limit still sees cache
    and memory contention), which would flatter the rate."""
    timed_out = sorted(name for name, status in mutant_statuses(work).items() if status == "timeout")
    if not timed_out:
        return
    print(f"  re-running {len(timed_out)} timed-out mutants one at a time", flush=True)
    env = {**os.environ, **MUTMUT_ENV}
    with (work / "mutmut.log").open("a") as handle:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *timed_out], cwd=work, env=env,
                       stdout=handle, stderr=subprocess.STDOUT, check=False)


def recheck_survivors(work: Path, tests: list[str], deselect: str, equivalent: dict[str, str], only: str = "",
                      new_tests: list[str] | None = None) -> None:
    """Plant each non-equivalent survivor of the finished run in `work` again, from mutmut's own diff,
    into a copy of the current tree, and run the package's tests on it (stopping at the first failure).

    Tests written for a run's survivors are checked this way without a whole new run, which would
    re-run the many mutants already killed. Results go to `work/recheck.json`: killed, survived, or
    gone (the diff no longer applies: that code was changed or removed since the run). A stopped
    re-check continues; delete the file to check every survivor again. `only`: a regular expression
    of the names to check now (the mutants a new test aims at). `new_tests`: run only these tests (node
    ids), the ones written since the run: the run's tests did not kill these mutants, so the whole
    selection kills one exactly when the new tests do, and much sooner."""
    survivors = [n for n, s in mutant_statuses(work).items()
                 if s in ("survived", "no tests") and n not in equivalent and re.search(only, n)]
    scratch = work.parent / f"{work.name}-recheck"
    copy_tree(scratch)
    results_file = work / "recheck.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    env = {**os.environ, **MUTMUT_ENV, "PYTHONPATH": str(scratch)}
    selection = [*new_tests, "-p", "no:cacheprovider"] if new_tests else test_selection(tests, deselect)
    for number, name in enumerate(survivors, 1):
        if name in results:  # checked by an earlier, stopped re-check
            continue
        shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": ""}).stdout
        lines = [line for line in shown.splitlines() if not line.startswith("#")]
        if "ǁ" in name:  # a method: mutmut shows its body dedented to the function's level
            lines = [line if line.startswith(("---", "+++", "@@")) or not line[1:].strip() else line[0] + "    " + line[1:]
                     for line in lines]
        diff = "".join(line + "\n" for line in lines)
        target = scratch / next(line[4:].strip() for line in diff.splitlines() if line.startswith("--- "))
        original = target.read_text()
        planted = subprocess.run(["patch", "-p0", "--no-backup-if-mismatch", "-F3", str(target)], input=diff,
                                 capture_output=True, text=True).returncode == 0
        # a planted line that does not compile would fail every test: not a kill, the diff does not fit
        planted = planted and subprocess.run([sys.executable, "-m", "py_compile", str(target)],
                                             capture_output=True).returncode == 0
        try:
            if not planted:
                results[name] = "gone"
            else:
                code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *selection],
                                      cwd=scratch, env=env, capture_output=True, text=True).returncode
                results[name] = "killed" if code != 0 else "survived"
        finally:
            target.write_text(original)
        print(f"  re-check {number}/{len(survivors)}: {results[name]} {name}", flush=True)
        results_file.write_text(json.dumps(results, indent=1))


def mutant_statuses(work: Path) -> dict[str, str]:
    """mutant name -> status of the finished run in `work`."""
    env = {**os.environ, **MUTMUT_ENV}
    mutmut = [sys.executable, "-m", "mutmut"]
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, check=True,
                         capture_output=True, text=True).stdout
    return dict(re.findall(r"^\s*(\S+): (.+)$", out, flags=re.MULTILINE))


def mutant_diff(work: Path, name: str) -> str:
    """The changed source line of one mutant, for the results file."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ""}).stdout
    lines = out.splitlines()
    plus = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    minus = [line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")]
    return (" / ".join(plus) if plus else "removed: " + " / ".join(minus))[:160]


def summarise(package: str, statuses: dict[str, str], work: Path, equivalent: dict[str, str]) -> str:
    recheck_file = work / "recheck.json"
    rechecked = json.loads(recheck_file.read_text()) if recheck_file.is_file() else {}
    later = {n for n, r in rechecked.items() if r == "killed" and statuses.get(n) in ("survived", "no tests")}
    gone = {n for n, r in rechecked.items() if r == "gone"}
    statuses = {n: ("killed" if n in later else s) for n, s in statuses.items() if n not in gone}
    counts = Counter(statuses.values())
    unrun = counts["not checked"]  # a run stopped early: rates over the mutants it tried
    total = len(statuses) - counts["skipped"] - unrun
    killed = sum(counts[s] for s in KILLED)
    survivors = sorted(n for n, s in statuses.items() if s not in (*KILLED, "skipped", "not checked"))
    eq = [n for n in survivors if n in equivalent]
    rate = 100 * killed / total if total else 0.0
    rate_eq = 100 * killed / (total - len(eq)) if total > len(eq) else 0.0
    lines = [
        f"<!-- package:{package} -->",
        f"### {package}",
        "",
        f"{dt.date.today()}: {total} mutants, {killed} killed ({counts['timeout']} by time-out), "
        f"{counts['survived']} survived, {counts['no tests']} reached by no test; "
        f"**kill rate {rate:.1f} %**, {rate_eq:.1f} % without the {len(eq)} equivalent ones"
        + (f"; partial run: {unrun} more mutants not run." if unrun else "."),
        "",
    ]
    if rechecked:
        lines += [f"Survivors re-checked with the tests written after the run (`--recheck`): {len(later)} killed "
                  f"(counted above), {len(gone)} gone with the code they changed (not counted).", ""]
    if survivors:
        lines += ["| mutant | status | change | equivalent because |", "|---|---|---|---|"]
        for name in survivors:
            change = mutant_diff(work, name).replace("|", "\\|")
            lines.append(f"| `{name}` | {statuses[name]} | `{change}` | {equivalent.get(name, '')} |")
        lines.append("")
    lines.append(f"<!-- /package:{package} -->")
    return "\n".join(lines)


def summary_row(block: str) -> str | None:
    match = re.search(r"### (\S+)\n\n(\S+): (\d+) mutants, (\d+) killed.*?kill rate ([\d.]+) %\*\*, ([\d.]+) %",
                      block, flags=re.DOTALL)
    if not match:
        return None
    name, day, total, killed, rate, rate_eq = match.groups()
    return f"| {name} | {total} | {killed} | {rate} % | {rate_eq} % | {day} |"


def write_results(blocks: dict[str, str]) -> None:
    old = RESULTS.read_text() if RESULTS.is_file() else ""
    kept = {pkg: blk for blk, pkg in re.findall(r"(<!-- package:(\S+) -->.*?<!-- /package:\2 -->)", old,
                                                 flags=re.DOTALL)}
    kept.update(blocks)
    ordered = [kept[p] for p in PACKAGES if p in kept]
    rows = [r for r in (summary_row(b) for b in ordered) if r]
    notes = NOTES + "\n"
    if NOTES in old:  # hand-written notes between the marker and the first package section
        tail = old[old.index(NOTES):]
        notes = tail[: tail.index("<!-- package:")] if "<!-- package:" in tail else tail
    text = "\n".join([
        "# Mutation testing",
        "",
        "Written by `python tools/mutants.py` (`make mutants`): mutmut plants one small bug at a time",
        "in a package and runs the fast tests that cover it. Killed = some test failed (or timed out).",
        "Mutants reached by no test count as survivors. Equivalent survivors cannot change behaviour;",
        "their reasons live in `tools/mutants_equivalent.yaml`.",
        "",
        "| package | mutants | killed | kill rate | without equivalent | run |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        notes,
        *ordered,
        "",
    ])
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", help=f"any of {list(PACKAGES)} (default: all)")
    parser.add_argument("--changed", metavar="BASE", help="mutate only the files changed since git BASE")
    parser.add_argument("--children", type=int, default=2, help="parallel mutant runs (default 2)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stopped runs under runs/mutants/ (mutmut keeps each result whose "
                             "function is unchanged) instead of starting from a fresh copy")
    parser.add_argument("--recheck", action="store_true",
                        help="plant the survivors of the finished runs under runs/mutants/ again and run the current "
                             "tests on them (after tests were written for them), then summarise")
    parser.add_argument("--only", default="", metavar="REGEX",
                        help="with --recheck: only the survivors whose names match (those a new test aims at)")
    parser.add_argument("--tests", nargs="+", metavar="NODE",
                        help="with --recheck: run only these tests (those written since the run)")
    parser.add_argument("--report-only", action="store_true",
                        help="summarise the finished runs under runs/mutants/ again, without running mutmut")
    args = parser.parse_args()
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        parser.error(f"unknown package(s) {unknown}; choose from {list(PACKAGES)}")
    plans: dict[str, list[str]] = {}
    if args.changed:
        for path in changed_files(args.changed):
            if (package := package_of(path)) is not None:
                plans.setdefault(package, []).append(path)
        if not plans:
            print(f"no mutated package has changed since {args.changed}")
            return
    else:
        plans = {p: PACKAGES[p][0] for p in (args.packages or PACKAGES)}
    equivalent = yaml.safe_load(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    for package, only in plans.items():
        _, tests, deselect = PACKAGES[package]
        work = REPO / "runs" / "mutants" / package
        if args.recheck or args.report_only:
            if not (work / "mutants").is_dir():
                print(f"[{package}] no finished run in {work}; skipped")
                continue
            if args.recheck:
                print(f"[{package}] re-checking the survivors of {work} with the current tests ...", flush=True)
                recheck_survivors(work, tests, deselect, equivalent or {}, args.only, args.tests)
        else:
            resuming = args.resume and (work / "mutants").is_dir()
            print(f"[{package}] {'resuming' if resuming else 'mutating'} {only} with {tests} in {work} ...", flush=True)
            if not resuming:
                prepare_copy(work, only, tests, deselect)
            run_mutmut(work, args.children)
            recheck_timeouts(work)
        statuses = mutant_statuses(work)
        block = summarise(package, statuses, work, equivalent or {})
        print(block.splitlines()[3], flush=True)
        if not args.changed:  # a partial run must not replace the package's recorded rate
            write_results({package: block})  # after each package: a later failure keeps it
            print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
