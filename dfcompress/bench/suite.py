"""Suite files: one TOML file per leaderboard, expanded into cells (one ``dfcompress run`` each). Torch-free.

A suite is a grid: every *method* (a synthesizer with its options, or a reference: real images, the teacher)
times every *task* (distill, prune at a ratio, ...) times every *budget* (iterations per batch, or equal wall
clock time) times every *model* pair (optional) times every *seed*. Layout::

    [suite]         name, description, requires (paths every cell needs), seeds, notes,
                    reference = {file, setting, budget} (reference-code rows), published (paper numbers),
                    extends = "BASE.toml" (take [vars], [run], [models], [budgets], [tasks], [prerequisites] and
                    requires/reference/notes from another suite; the methods are this file's own)
    [vars]          NAME = "value" | {env = "VAR", default = "value"}; used as ${NAME} in any string
    [run]           RunConfig fields shared by every cell (plus [run.synth_options] ...)
    [models.ID]     optional teacher/student pairs (RunConfig fields, label, requires)
    [budgets.ID]    label, iterations = N | equal_time = {method, iterations}, calibration = {from_budget, probe_iterations}
    [methods.ID]    label, kind = "synthetic" | "real" | "teacher", budgets = [...], tasks = [...], requires,
                    note, real_images, seeds (this method's own, instead of the suite's: a list, or a table
                    TASK = [...] for some tasks), extends = "METHOD" (that method's table under this one's,
                    one level; label, note and seeds not taken), and RunConfig fields (synth, synth_options, ...)
    [tasks.ID]      label, reuse_synthetic_from = "TASK-ID", and RunConfig fields (task, student, ratio, ...)
    [prerequisites.ID]  label, command = ["stats", "collect", ...] (a dfcompress command), out, requires

Strings may use ``${NAME}`` (a var), ``${prereq:ID}`` (the output path of a prerequisite), ``${results}`` (the
suite's results directory) and, in a prerequisite, ``${out}``. Paths are relative to the repository root
(the directory holding ``benchmarks/``); every command runs there.

Cell ids are ``<method>--<task>[--<budget>][--<model>]--s<seed>``: stable as long as the table keys are.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import COMPONENT_TABLES, RunConfig
from ..errors import ConfigError

RUN_FIELDS = {f.name for f in fields(RunConfig)}
KINDS = ("synthetic", "real", "teacher")
#: method kinds that synthesize nothing, so no synthesis budget applies to them
UNBUDGETED_KINDS = ("real", "teacher")
SUITE_KEYS = {"name", "description", "requires", "seeds", "notes", "reference", "published", "extends"}
#: what ``[suite] extends = "BASE.toml"`` takes from the base suite: these tables, entry by entry (the
#: extending file's entries of the same id win), and these [suite] keys unless set; never the methods
INHERITED_TABLES = ("vars", "run", "models", "budgets", "tasks", "prerequisites")
INHERITED_SUITE_KEYS = ("requires", "reference", "notes")
MODEL_META = {"label", "requires"}
BUDGET_KEYS = {"label", "iterations", "equal_time", "calibration"}
METHOD_META = {"label", "kind", "budgets", "tasks", "requires", "note", "real_images", "seeds", "extends"}
#: what ``[methods.X] extends = "Y"`` does not take from Y: the words that describe the row, and its seeds
METHOD_OWN_KEYS = ("label", "note", "seeds", "extends")
TASK_META = {"label", "reuse_synthetic_from"}
PREREQ_KEYS = {"label", "command", "out", "requires"}
TABLES = {"suite", "vars", "run", "models", "budgets", "methods", "tasks", "prerequisites"}
_VAR = re.compile(r"\$\{([^}]*)\}")


class SuiteError(ConfigError):
    """A suite file is malformed or inconsistent."""


@dataclass
class Budget:
    id: str
    label: str
    iterations: int | None = None
    #: ``(method id, iterations)``: every method gets the time that method needs for that many iterations
    equal_time: tuple[str, int] | None = None
    calibrate_from: str | None = None
    probe_iterations: int = 20


@dataclass
class Prerequisite:
    id: str
    label: str
    command: list[str]
    out: str  # relative to the repository root
    requires: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # unresolved vars


@dataclass
class Cell:
    id: str
    suite: str
    method: str
    method_label: str
    kind: str
    task: str
    task_label: str
    budget: Budget | None
    model: str | None
    seed: int
    #: RunConfig values (component option tables included), without ``out`` and budget iterations
    config: dict
    depends_on: str | None = None
    prerequisites: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # unresolved vars
    note: str = ""
    real_images: int = 0

    @property
    def budget_id(self) -> str:
        return self.budget.id if self.budget else ""

    def config_hash(self, iterations: int | None = None) -> str:
        """A short hash of the cell's setting (what the run computes, not where it writes)."""
        data = dict(self.config)
        if iterations is not None:
            data["iterations"] = iterations
        data.pop("out", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Suite:
    name: str
    path: Path
    root: Path
    description: str
    seeds: list[int]
    notes: list[str]
    requires: list[str]
    vars: dict[str, str]
    budgets: dict[str, Budget]
    prerequisites: dict[str, Prerequisite]
    cells: list[Cell]
    #: (method id, label, model id) of "teacher" reference rows, filled from finished cells
    teacher_rows: list[tuple[str, str, str | None]]
    reference: dict | None
    published: dict
    labels: dict[str, dict[str, str]]  # "methods" / "tasks" / "budgets" / "models" -> id -> label

    @property
    def results_dir(self) -> Path:
        return self.root / results_path(self.name)

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise SuiteError(f"suite {self.name} has no cell {cell_id}")

    def select(self, patterns: tuple[str, ...] | list[str] = ()) -> list[Cell]:
        """The cells matching any pattern (a glob on the cell id, or a substring), plus the cells they
        depend on, in run order."""
        if not patterns:
            return list(self.cells)
        chosen = {c.id for c in self.cells if any(_match(c.id, p) for p in patterns)}
        if not chosen:
            raise SuiteError(f"--only {' '.join(patterns)} matches no cell of suite {self.name}")
        added = True
        while added:
            added = False
            for c in self.cells:
                if c.id in chosen and c.depends_on and c.depends_on not in chosen:
                    chosen.add(c.depends_on)
                    added = True
        return [c for c in self.cells if c.id in chosen]

    def missing_requirements(self, cell: Cell) -> str | None:
        """Why ``cell`` cannot run here (a missing path or an unset variable), or None."""
        if cell.missing:
            return "; ".join(cell.missing)
        for req in [*self.requires, *cell.requires]:
            if not (self.root / req).exists():
                return f"needs {req}, which is absent"
        for prereq_id in cell.prerequisites:
            prereq = self.prerequisites[prereq_id]
            if prereq.missing:
                return f"prerequisite {prereq_id}: " + "; ".join(prereq.missing)
            for req in prereq.requires:
                if not (self.root / req).exists():
                    return f"prerequisite {prereq_id} needs {req}, which is absent"
        return None


def results_path(name: str) -> str:
    """The results directory of suite ``name``, relative to the repository root."""
    return f"benchmarks/results/{name}"


def _match(cell_id: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(cell_id, pattern)
    return pattern in cell_id


def find_root(path: Path) -> Path:
    """The repository root of a suite file: the parent of ``benchmarks/`` (``benchmarks/suites/x.toml``), else
    the current directory."""
    path = path.resolve()
    for parent in path.parents:
        if parent.name == "benchmarks":
            return parent.parent
    return Path.cwd()


# --- variables -------------------------------------------------------------------------------------------


class _Expander:
    def __init__(self, values: dict[str, str], unresolved: dict[str, str], builtins: dict[str, str],
                 prereq_outs: dict[str, str]) -> None:
        self.values, self.unresolved, self.builtins, self.prereq_outs = values, unresolved, builtins, prereq_outs

    def expand(self, value: Any, where: str, missing: list[str], prereqs: list[str], extra: dict | None = None) -> Any:
        if isinstance(value, dict):
            return {k: self.expand(v, where, missing, prereqs, extra) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, where, missing, prereqs, extra) for v in value]
        if not isinstance(value, str):
            return value

        def replace(match: re.Match) -> str:
            name = match.group(1).strip()
            if name.startswith("prereq:"):
                pid = name.partition(":")[2].strip()
                if pid not in self.prereq_outs:
                    raise SuiteError(f"{where}: ${{{name}}} names no [prerequisites.{pid}]")
                if pid not in prereqs:
                    prereqs.append(pid)
                return self.prereq_outs[pid]
            if extra and name in extra:
                return extra[name]
            if name in self.builtins:
                return self.builtins[name]
            if name in self.values:
                return self.values[name]
            if name in self.unresolved:
                reason = self.unresolved[name]
                if reason not in missing:
                    missing.append(reason)
                return f"<{name}>"
            raise SuiteError(f"{where}: unknown variable ${{{name}}}; define it in [vars]")

        return _VAR.sub(replace, value.replace("$$", "\x00")).replace("\x00", "$")


def _vars(raw: dict, overrides: dict[str, str], path: Path) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    for name, spec in raw.items():
        if isinstance(spec, dict):
            unknown = set(spec) - {"env", "default", "help"}
            if unknown or "env" not in spec:
                raise SuiteError(f"{path}: [vars] {name} must be a string or {{env = \"VAR\", default = \"...\"}}")
            env = os.environ.get(spec["env"])
            if env:
                values[name] = env
            elif "default" in spec:
                values[name] = str(spec["default"])
            else:
                hint = f" ({spec['help']})" if spec.get("help") else ""
                unresolved[name] = f"set ${spec['env']} or --set {name}=VALUE{hint}"
        elif isinstance(spec, (str, int, float)) and not isinstance(spec, bool):
            values[name] = str(spec)
        else:
            raise SuiteError(f"{path}: [vars] {name} must be a string, a number or an env table")
    for name, value in overrides.items():
        if name not in raw:
            raise SuiteError(f"--set {name}: the suite has no such variable; known: {', '.join(sorted(raw)) or '(none)'}")
        values[name] = value
        unresolved.pop(name, None)
    return values, unresolved


# --- parsing ---------------------------------------------------------------------------------------------


def _table(data: dict, key: str, path: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"{path}: [{key}] must be a table")
    return value


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")


def _run_part(table: dict, meta: set[str], where: str) -> dict:
    _check_keys(table, RUN_FIELDS | meta, where)
    part = {k: v for k, v in table.items() if k in RUN_FIELDS}
    for name in COMPONENT_TABLES:
        if name in part and not isinstance(part[name], dict):
            raise SuiteError(f"{where}: {name} must be a table of key = value")
    if "out" in part:
        raise SuiteError(f"{where}: out is chosen by the runner (benchmarks/results/<suite>/<cell>)")
    return part


def merge(*layers: dict) -> dict:
    """Scalars replace; component option tables merge key by key (as make_run_config does)."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in COMPONENT_TABLES:
                result[key] = {**result.get(key, {}), **value}
            else:
                result[key] = value
    return result


def _id_ok(kind: str, key: str, path: Path) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", key) or "--" in key:
        raise SuiteError(f"{path}: {kind} id {key!r} must be letters, digits, . _ + - (no '--')")


def _budget(key: str, table: dict, path: Path) -> Budget:
    where = f"{path}: [budgets.{key}]"
    _check_keys(table, BUDGET_KEYS, where)
    label = str(table.get("label", key))
    if ("iterations" in table) == ("equal_time" in table):
        raise SuiteError(f"{where} needs exactly one of iterations = N or equal_time = {{method, iterations}}")
    if "iterations" in table:
        n = table["iterations"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SuiteError(f"{where}: iterations must be a positive integer")
        return Budget(key, label, iterations=n)
    eq = table["equal_time"]
    if not isinstance(eq, dict) or set(eq) != {"method", "iterations"} or not isinstance(eq["iterations"], int):
        raise SuiteError(f"{where}: equal_time must be {{method = \"ID\", iterations = N}}")
    calibration = table.get("calibration", {})
    if not isinstance(calibration, dict) or set(calibration) - {"from_budget", "probe_iterations"}:
        raise SuiteError(f"{where}: calibration must be {{from_budget = \"ID\", probe_iterations = N}}")
    probe = calibration.get("probe_iterations", 20)
    if not isinstance(probe, int) or probe < 2:
        raise SuiteError(f"{where}: calibration.probe_iterations must be an integer >= 2")
    return Budget(key, label, equal_time=(str(eq["method"]), int(eq["iterations"])),
                  calibrate_from=calibration.get("from_budget"), probe_iterations=probe)


def _extend(data: dict, path: Path) -> dict:
    """``data`` with what its ``[suite] extends = "BASE.toml"`` (a path relative to this file) gives it: a study
    of a few methods on another suite's recipe keeps that recipe in one place. Not recursive."""
    head = data.get("suite", {})
    if not isinstance(head, dict) or "extends" not in head:
        return data
    base_path = path.parent / str(head["extends"])
    try:
        base = tomllib.loads(base_path.read_text(encoding="utf-8"))
    except OSError:
        raise SuiteError(f"{path}: [suite] extends {head['extends']!r}, which does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: [suite] extends {base_path}, which is not valid TOML: {exc}") from None
    if "extends" in base.get("suite", {}):
        raise SuiteError(f"{path}: [suite] extends {base_path}, which extends another suite (one level only)")
    merged = dict(data)
    for key in INHERITED_TABLES:
        own, inherited = _table(data, key, path), _table(base, key, base_path)
        if inherited or own:
            merged[key] = {**inherited, **own}
    # an inherited budget none of this file's methods uses has no cells (and may name a method not here)
    wanted = [m.get("budgets", [] if m.get("kind") in UNBUDGETED_KINDS else None) if isinstance(m, dict) else None
              for m in _table(data, "methods", path).values()]
    if wanted and all(isinstance(b, list) for b in wanted):
        used = {b for budgets in wanted for b in budgets} | set(_table(data, "budgets", path))
        merged["budgets"] = {k: v for k, v in merged.get("budgets", {}).items() if k in used}
    merged["suite"] = {**{k: v for k, v in _table(base, "suite", base_path).items() if k in INHERITED_SUITE_KEYS},
                       **{k: v for k, v in head.items() if k != "extends"}}
    return merged


def load_suite(path: str | Path, *, overrides: dict[str, str] | None = None, root: str | Path | None = None) -> Suite:
    """Parse and check a suite file; ``overrides`` replace [vars] values (``--set NAME=VALUE``)."""
    path = Path(path)
    data = _extend(_read(path), path)
    _check_keys(data, TABLES, str(path))
    head, name, seeds = _suite_table(data, path)
    results_rel = results_path(name)
    values, unresolved = _vars(_table(data, "vars", path), dict(overrides or {}), path)
    prereq_outs = _prerequisite_outs(data, results_rel, path)
    ex = _Expander(values, unresolved, {"results": results_rel}, prereq_outs)
    budgets = _budgets(data, path)
    tasks = _tasks(data, ex, path)
    methods = _methods(data, budgets, tasks, ex, path)
    _check_budgets(budgets, _table(data, "methods", path), path)
    models = _models(data, ex, path)
    labels: dict[str, dict[str, str]] = {
        "methods": {m.id: m.label for m in methods.values()},
        "tasks": {t.id: t.label for t in tasks.values()},
        "budgets": {k: b.label for k, b in budgets.items()},
        "models": {m.id: m.label for m in models if m.id},
    }
    base = _part(ex, _table(data, "run", path), set(), f"{path}: [run]")
    notes = head.get("notes", [])
    return Suite(
        name=name, path=path, root=Path(root) if root is not None else find_root(path),
        description=str(head.get("description", "")), seeds=list(seeds),
        notes=[str(n) for n in ([notes] if isinstance(notes, str) else notes)],
        requires=_suite_requires(head, ex, path), vars=values, budgets=budgets,
        prerequisites=_prerequisites(data, prereq_outs, ex, path),
        cells=_cells(name, path, base, models, budgets, methods, tasks, seeds),
        teacher_rows=[(m.id, m.label, model.id) for m in methods.values() if m.kind == "teacher" for model in models],
        reference=_reference(head, budgets, path), published=_published(head, path), labels=labels,
    )


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite file {path} is not valid TOML: {exc}") from None


@dataclass
class _Part:
    """A table's RunConfig values after variable expansion, with the unset variables it uses, the
    prerequisites it names and the paths it requires."""

    config: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    prereqs: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)


def _part(ex: _Expander, table: dict, meta: set[str], where: str) -> _Part:
    part = _Part()
    expanded = ex.expand(table, where, part.missing, part.prereqs)
    part.config = _run_part(expanded, meta, where)
    part.requires = [str(r) for r in expanded.get("requires", [])]
    return part


@dataclass
class _Method:
    id: str
    label: str
    kind: str
    part: _Part
    budgets: list[str]
    tasks: list[str]
    note: str = ""
    real_images: int = 0
    seeds: dict[str | None, list[int]] = field(default_factory=dict)  # task id (None: every task) -> seeds

    def seeds_for(self, task_id: str, suite_seeds: list[int]) -> list[int]:
        return self.seeds.get(task_id, self.seeds.get(None, suite_seeds))


@dataclass
class _Task:
    id: str
    label: str
    part: _Part
    reuse: str | None  # the task whose synthetic images this one reuses


@dataclass
class _Model:
    id: str | None  # None: the suite has no [models]
    label: str
    part: _Part


# --- one parser per table --------------------------------------------------------------------------------


def _suite_table(data: dict, path: Path) -> tuple[dict, str, list[int]]:
    """[suite]: the table, the suite's name and its seeds."""
    head = _table(data, "suite", path)
    _check_keys(head, SUITE_KEYS, f"{path}: [suite]")
    name = str(head.get("name", path.stem))
    _id_ok("suite", name, path)
    return head, name, _seeds(head.get("seeds", [0]), f"{path}: [suite]")


def _seeds(seeds: Any, where: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SuiteError(f"{where} seeds must be a non-empty list of integers")
    return seeds


def _suite_requires(head: dict, ex: _Expander, path: Path) -> list[str]:
    missing: list[str] = []
    requires = ex.expand(list(head.get("requires", [])), f"{path}: [suite] requires", missing, [])
    if missing:
        raise SuiteError(f"{path}: [suite] requires cannot use unset variables")
    return [str(r) for r in requires]


def _reference(head: dict, budgets: dict[str, Budget], path: Path) -> dict | None:
    """[suite] reference: where the reference-code rows come from."""
    reference = head.get("reference")
    if reference is None:
        return None
    if not isinstance(reference, dict) or set(reference) - {"file", "setting", "budget"} or "file" not in reference:
        raise SuiteError(f"{path}: [suite] reference must be {{file = \"...\", setting = \"ID\", budget = \"ID\"}}")
    if reference.get("budget") and reference["budget"] not in budgets:
        raise SuiteError(f"{path}: [suite] reference.budget {reference['budget']!r} is not a budget")
    return reference


def _published(head: dict, path: Path) -> dict:
    """[suite.published]: numbers printed in papers."""
    published = head.get("published", {})
    if not isinstance(published, dict):
        raise SuiteError(f"{path}: [suite] published must be a table")
    for key, row in published.items():
        if key != "source" and (not isinstance(row, dict) or "top1" not in row):
            raise SuiteError(f"{path}: [suite.published.{key}] needs top1 (a fraction) and task")
    return published


def _prerequisite_outs(data: dict, results_rel: str, path: Path) -> dict[str, str]:
    """[prerequisites.ID]: the output path of each (what ``${prereq:ID}`` stands for)."""
    outs = {}
    for key, table in _table(data, "prerequisites", path).items():
        _id_ok("prerequisite", key, path)
        if not isinstance(table, dict) or "command" not in table or "out" not in table:
            raise SuiteError(f"{path}: [prerequisites.{key}] needs command = [...] and out = \"NAME\"")
        outs[key] = f"{results_rel}/_prereq/{table['out']}"
    return outs


def _prerequisites(data: dict, outs: dict[str, str], ex: _Expander, path: Path) -> dict[str, Prerequisite]:
    prerequisites: dict[str, Prerequisite] = {}
    for key, table in _table(data, "prerequisites", path).items():
        where = f"{path}: [prerequisites.{key}]"
        _check_keys(table, PREREQ_KEYS, where)
        command = table["command"]
        if not isinstance(command, list) or not command or not all(isinstance(a, (str, int, float)) for a in command):
            raise SuiteError(f"{where}: command must be a list of arguments of a dfcompress command")
        missing: list[str] = []
        nested: list[str] = []
        args = [str(a) for a in ex.expand([str(a) for a in command], where, missing, nested, {"out": outs[key]})]
        if nested:
            raise SuiteError(f"{where}: a prerequisite cannot use another prerequisite's output")
        reqs = ex.expand(list(table.get("requires", [])), where, missing, nested)
        prerequisites[key] = Prerequisite(key, str(table.get("label", key)), args, outs[key], reqs, missing)
    return prerequisites


def _models(data: dict, ex: _Expander, path: Path) -> list[_Model]:
    """[models.ID]: the teacher/student pairs; one pair-less model when there are none."""
    models = []
    for key, table in _table(data, "models", path).items():
        _id_ok("model", key, path)
        label = str(table.get("label", key)) if isinstance(table, dict) else key
        models.append(_Model(key, label, _part(ex, table, MODEL_META, f"{path}: [models.{key}]")))
    return models or [_Model(None, "", _Part())]


def _budgets(data: dict, path: Path) -> dict[str, Budget]:
    budgets = {}
    for key, table in _table(data, "budgets", path).items():
        _id_ok("budget", key, path)
        budgets[key] = _budget(key, table, path)
    return budgets


def _check_budgets(budgets: dict[str, Budget], methods: dict, path: Path) -> None:
    """The methods and budgets that budgets name exist, and an equal-time reference runs in its budget."""
    for b in budgets.values():
        if b.equal_time and b.equal_time[0] not in methods:
            raise SuiteError(f"{path}: [budgets.{b.id}] equal_time.method {b.equal_time[0]!r} is not a method")
        if b.calibrate_from and b.calibrate_from not in budgets:
            raise SuiteError(f"{path}: [budgets.{b.id}] calibration.from_budget {b.calibrate_from!r} is not a budget")
        if b.calibrate_from and budgets[b.calibrate_from].iterations is None:
            raise SuiteError(f"{path}: [budgets.{b.id}] calibration.from_budget must be an iterations budget")
        if b.equal_time:
            ref = methods[b.equal_time[0]]
            if b.id not in (ref.get("budgets", list(budgets)) if isinstance(ref, dict) else []):
                raise SuiteError(f"{path}: [budgets.{b.id}] equal_time.method {b.equal_time[0]!r} must itself run "
                                 f"in this budget")


def _tasks(data: dict, ex: _Expander, path: Path) -> dict[str, _Task]:
    raw = _table(data, "tasks", path)
    if not raw:
        raise SuiteError(f"{path}: no [tasks.*] tables")
    order = list(raw)
    tasks = {}
    for key, table in raw.items():
        _id_ok("task", key, path)
        where = f"{path}: [tasks.{key}]"
        if not isinstance(table, dict):
            raise SuiteError(f"{where} must be a table")
        reuse = table.get("reuse_synthetic_from")
        if reuse is not None and (reuse not in raw or reuse == key):
            raise SuiteError(f"{where}: reuse_synthetic_from must name another task")
        if reuse is not None and order.index(reuse) > order.index(key):
            raise SuiteError(f"{where}: reuse_synthetic_from {reuse!r} must come before {key!r} in the file")
        tasks[key] = _Task(key, str(table.get("label", key)), _part(ex, table, TASK_META, where), reuse)
    return tasks


def _methods(data: dict, budgets: dict[str, Budget], tasks: dict[str, _Task], ex: _Expander,
             path: Path) -> dict[str, _Method]:
    raw = _table(data, "methods", path)
    if not raw:
        raise SuiteError(f"{path}: no [methods.*] tables")
    for key in raw:
        _id_ok("method", key, path)
    return {key: _method(key, _method_table(key, raw, path), budgets, tasks, ex, f"{path}: [methods.{key}]")
            for key in raw}


def _method_table(key: str, raw: dict, path: Path) -> Any:
    """[methods.KEY], with the table it ``extends`` under it (one level; label, note and seeds stay this
    method's own; component option tables merge key by key)."""
    table = raw[key]
    if not isinstance(table, dict) or "extends" not in table:
        return table
    where = f"{path}: [methods.{key}]"
    base_id = table["extends"]
    if base_id not in raw or base_id == key:
        raise SuiteError(f"{where}: extends {base_id!r}, which is not another method of this file; "
                         f"known: {', '.join(k for k in raw if k != key)}")
    base = raw[base_id]
    if not isinstance(base, dict) or "extends" in base:
        raise SuiteError(f"{where}: extends {base_id!r}, which extends another method (one level only)")
    inherited = {k: v for k, v in base.items() if k not in METHOD_OWN_KEYS}
    return {k: v for k, v in merge(inherited, table).items() if k != "extends"}


def _method(key: str, table: Any, budgets: dict[str, Budget], tasks: dict[str, _Task], ex: _Expander,
            where: str) -> _Method:
    if not isinstance(table, dict):
        raise SuiteError(f"{where} must be a table")
    kind = table.get("kind", "synthetic")
    if kind not in KINDS:
        raise SuiteError(f"{where}: kind must be one of {', '.join(KINDS)}")
    label = str(table.get("label", key))
    if kind == "teacher":
        _check_keys(table, {"label", "kind", "note"}, where)
        return _Method(key, label, kind, _Part(), [], [])
    part = _part(ex, table, METHOD_META, where)
    if kind == "real" and "synthetic" not in part.config:
        raise SuiteError(f"{where}: a real-images method needs synthetic = \"${{prereq:ID}}\" (a data import)")
    if kind == "synthetic" and "synthetic" in part.config:
        raise SuiteError(f"{where}: synthetic = ... belongs to kind = \"real\" methods")
    method_budgets = table.get("budgets", [] if kind in UNBUDGETED_KINDS else list(budgets))
    if not isinstance(method_budgets, list) or any(b not in budgets for b in method_budgets):
        raise SuiteError(f"{where}: budgets must list ids of [budgets.*] tables; known: {', '.join(budgets)}")
    if kind == "real" and method_budgets:
        raise SuiteError(f"{where}: real images have no synthesis budget; drop budgets")
    method_tasks = table.get("tasks", list(tasks))
    if not isinstance(method_tasks, list) or any(t not in tasks for t in method_tasks):
        raise SuiteError(f"{where}: tasks must list ids of [tasks.*] tables; known: {', '.join(tasks)}")
    real_images = table.get("real_images", 0)
    if not isinstance(real_images, int) or real_images < 0:
        raise SuiteError(f"{where}: real_images must be a non-negative integer (real images the method uses)")
    for task_id in method_tasks:
        reuse = tasks[task_id].reuse
        if reuse is not None and kind == "synthetic" and reuse not in method_tasks:
            raise SuiteError(f"{where}: task {task_id} reuses the images of task {reuse}, "
                             f"which this method does not run; add it to tasks")
    seeds = _method_seeds(table["seeds"], method_tasks, where) if "seeds" in table else {}
    return _Method(key, label, kind, part, method_budgets, method_tasks, str(table.get("note", "")), real_images,
                   seeds)


def _method_seeds(seeds: Any, method_tasks: list[str], where: str) -> dict[str | None, list[int]]:
    """A method's ``seeds``: a list for every task, or a table ``TASK = [...]`` (tasks not named: the suite's)."""
    if not isinstance(seeds, dict):
        return {None: _seeds(seeds, where)}
    unknown = [t for t in seeds if t not in method_tasks]
    if unknown:
        raise SuiteError(f"{where}: seeds names task(s) {', '.join(unknown)} this method does not run; "
                         f"its tasks: {', '.join(method_tasks)}")
    return {task_id: _seeds(value, f"{where} (task {task_id}):") for task_id, value in seeds.items()}


# --- cells -----------------------------------------------------------------------------------------------


def _cells(name: str, path: Path, base: _Part, models: list[_Model], budgets: dict[str, Budget],
           methods: dict[str, _Method], tasks: dict[str, _Task], seeds: list[int]) -> list[Cell]:
    """Every method x task x model x budget x seed, in run order: budget-free cells first, then budget by budget
    (in file order); tasks in file order, so a task reusing another's synthetic images comes after it."""
    cells = [_cell(name, results_path(name), base, method, tasks[task_id], model, budgets.get(budget_id), seed)
             for method in methods.values() if method.kind != "teacher"
             for task_id in method.tasks
             for model in models
             for budget_id in (method.budgets or [None])
             for seed in method.seeds_for(task_id, seeds)]
    order = {b: i for i, b in enumerate([None, *budgets])}
    task_order = {t: i for i, t in enumerate(tasks)}
    method_order = {m: i for i, m in enumerate(methods)}
    cells.sort(key=lambda c: (order[c.budget.id if c.budget else None], task_order[c.task], method_order[c.method],
                              c.model or "", c.seed))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise SuiteError(f"{path}: duplicate cell ids")
    return cells


def _cell(suite: str, results_rel: str, base: _Part, method: _Method, task: _Task, model: _Model,
          budget: Budget | None, seed: int) -> Cell:
    config = merge(base.config, model.part.config, method.part.config, task.part.config, {"seed": seed})
    parts = [method.id, task.id, *([budget.id] if budget else []), *([model.id] if model.id else []), f"s{seed}"]
    depends = None
    if task.reuse is not None and method.kind == "synthetic":
        depends = "--".join([method.id, task.reuse, *parts[2:]])
        config["synthetic"] = f"{results_rel}/{depends}/synthetic"
    layers = (base, method.part, task.part, model.part)
    return Cell(
        id="--".join(parts), suite=suite, method=method.id, method_label=method.label, kind=method.kind,
        task=task.id, task_label=task.label, budget=budget, model=model.id, seed=seed, config=config,
        depends_on=depends, prerequisites=list(dict.fromkeys(p for layer in layers for p in layer.prereqs)),
        requires=method.part.requires + model.part.requires,
        missing=list(dict.fromkeys(m for layer in layers for m in layer.missing)), note=method.note,
        real_images=method.real_images,
    )
