"""The plugin author's test kit (dfcompress.testing): every built-in and the example plugin pass its checks,
the checks fail on broken components with a clear message, registrations agree with their classes, and
the option tables in the docs agree with the Config defaults."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import pytest
import torch
from conftest import REPO
from torch import nn

from dfcompress import hookimpl
from dfcompress.components import NoOptions, PruneResult, SynthBatch, Task
from dfcompress.distill.kd import KnowledgeDistillation
from dfcompress.plugins import build_registry, get_plugin_manager
from dfcompress.synth.noise import NoiseSynthesizer
from dfcompress.testing import (
    CHECKS,
    ContractError,
    check_distiller,
    check_pruner,
    check_registered,
    check_synthesizer,
    check_task,
    tiny_teacher,
)


def _registry():
    """The built-ins and, when it is importable, the example plugin (registered directly: no entry points)."""
    pm = get_plugin_manager(load_entrypoints=False)
    try:
        import dfcompress_example
    except ImportError:
        pass
    else:
        pm.register(dfcompress_example, name="example")
    return build_registry(pm)


REGISTRY = _registry()
COMPONENTS = [(kind, e.name) for kind in CHECKS for e in REGISTRY.list(kind)]
ALL_ENTRIES = [(kind, e.name) for kind in REGISTRY.entries for e in REGISTRY.list(kind)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread is fastest on the small shared machines."""


@pytest.fixture(scope="module")
def guides(tmp_path_factory) -> dict:
    """Options for ``needs_guides`` synthesizers, each taking the keys its Config has: class statistics of the
    kit's tiny teacher (seeded's ``stats``) and an image folder of two guides per class (imagine's ``guides``)."""
    from PIL import Image

    from dfcompress.synth.labels import make_labels
    from dfcompress.synth.seeded_stats import collect_stats

    teacher = tiny_teacher()
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(20, 3, *teacher.input.image_size, generator=g) * 255).to(torch.uint8)
    labels = make_labels(20, 10)
    root = tmp_path_factory.mktemp("guides")
    path = collect_stats(teacher, images, labels, layers="Conv2d").save(root / "stats.safetensors")
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / "folder" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return {"stats": str(path), "guides": str(root / "folder")}


# --------------------------------------------------------------------------- every component passes


def test_the_registry_has_the_builtins_and_the_example():
    names = {(kind, name) for kind, name in COMPONENTS}
    assert {("synthesizers", "noise"), ("synthesizers", "deepinversion"), ("synthesizers", "seeded"),
            ("distillers", "kd"), ("pruners", "l1"), ("tasks", "distill")} <= names
    pytest.importorskip("dfcompress_example")
    assert ("synthesizers", "impressions") in names


#: smaller generators for the generator-based synthesizers (natural, fast), wherever a Config has the field
SMALL = {"generator_width": 16, "latent_dim": 32}


@pytest.mark.parametrize("kind, name", COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_every_component_passes_its_contract(kind, name, guides):
    cls = REGISTRY.get(kind, name)
    if kind == "tasks":
        check_task(cls)
        return
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    options = {k: v for k, v in SMALL.items() if k in fields}
    if getattr(cls, "needs_guides", False):
        options.update({k: v for k, v in guides.items() if k in fields})
    CHECKS[kind](cls, options)


@pytest.mark.parametrize("kind, name", ALL_ENTRIES, ids=[f"{k}:{n}" for k, n in ALL_ENTRIES])
def test_registered_name_and_summary_are_the_class_s_own(kind, name):
    cls = check_registered(kind, name, REGISTRY)
    assert cls is REGISTRY.get(kind, name)


def test_check_registered_names_the_mismatch():
    class Plugin:
        @hookimpl
        def register_synthesizers(self, register):
            register("dfcompress.synth.noise:NoiseSynthesizer", name="noisy", summary="noise")

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Plugin(), name="mismatch")
    registry = build_registry(pm)
    with pytest.raises(ContractError, match=r"(?s)registered as 'noisy' but its name attribute is 'noise'.*"
                                            r"registered with summary 'noise'"):
        check_registered("synthesizers", "noisy", registry)


def test_the_kit_runs_the_example_plugin_from_its_own_tests():
    impressions = pytest.importorskip("dfcompress_example.impressions")
    batch = check_synthesizer(impressions.ClassImpressions, {"iterations": 1})
    assert isinstance(batch, SynthBatch) and batch.metrics["iterations"] == 1


# --------------------------------------------------------------------------- the checks can fail


class Quiet(NoiseSynthesizer):
    """A working synthesizer to break one thing at a time."""

    name = "quiet"
    summary = "noise for the contract tests"


def broken(**attrs) -> type:
    return type("Broken", (Quiet,), {"__module__": __name__, **attrs})


def options(annotation, spec, *, frozen=True) -> type:
    """An options dataclass with one field ``x``."""
    return dataclasses.make_dataclass("Options", [("x", annotation, spec)], frozen=frozen)


@dataclass(frozen=True)
class TwoOptions:
    iterations: int = field(default=5, metadata={"help": "steps"})
    scale: float = field(default=1.0, metadata={"help": "a weight"})


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"name": ""}, "name must be a non-empty lower-case snake_case string"),
        ({"name": "Has Spaces"}, "name must be a non-empty lower-case snake_case string"),
        ({"summary": ""}, "summary must be a non-empty one-line string"),
        ({"summary": "two\nlines"}, "summary must be a non-empty one-line string"),
        ({"paper": 1905}, "paper must be None or a non-empty string"),
        ({"Config": dict}, "Config must be a dataclass"),
        ({"Config": options(int, field(default=1, metadata={"help": "x"}), frozen=False)},
         "Config must be a frozen dataclass"),
        ({"Config": options(int, field(default=1))}, "option 'x' has no help"),
        ({"Config": options(int, field(metadata={"help": "x"}))}, "option 'x' has no default"),
        ({"Config": options(list, field(default_factory=list, metadata={"help": "x"}))},
         "option 'x' has type .*cannot set"),
        ({"Config": options(str, field(default="c", metadata={"help": "x", "choices": ("a", "b")}))},
         "option 'x' defaults to 'c', not one of its choices"),
        ({"uses_student": "yes"}, "uses_student must be a bool"),
        ({"needs_guides": 1}, "needs_guides must be a bool"),
        ({"iterations_option": "steps", "Config": TwoOptions}, r"iterations_option 'steps' must be None or the name"),
        ({"iterations_option": "scale", "Config": TwoOptions}, "names a float option; it must be an int"),
        ({"default_schedule": "sometimes"}, "default_schedule must be one of offline, online"),
        ({"run_defaults": {"batch_size": 32, "rounds": 5}}, "run_defaults names rounds, which are not run settings"),
        ({"run_defaults": {"batch_size": 0}}, "run_defaults .* is not a valid run configuration: --batch-size"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_class_level_problems_are_named(attrs, message):
    with pytest.raises(ContractError, match=message) as info:
        check_synthesizer(broken(**attrs))
    assert "Broken" in str(info.value) and "breaks the plugin contract" in str(info.value)


def test_all_class_level_problems_are_listed_at_once():
    with pytest.raises(ContractError) as info:
        check_synthesizer(broken(name="", summary="", stateful="no"))
    text = str(info.value)
    assert "name must be" in text and "summary must be" in text and "stateful must be a bool" in text


def test_config_without_a_no_argument_constructor_is_named():
    @dataclass(frozen=True)
    class Picky:
        x: int = field(default=0, metadata={"help": "x"})

        def __post_init__(self):
            if self.x == 0:
                raise ValueError("x must not be 0")

    with pytest.raises(ContractError, match=r"Config\(\) with no arguments raised ValueError: x must not be 0"):
        check_synthesizer(broken(Config=Picky))


def test_a_class_of_the_wrong_kind_is_refused():
    with pytest.raises(ContractError, match="must be a subclass of dfcompress.components.Synthesizer"):
        check_synthesizer(int)
    with pytest.raises(ContractError, match="must be a subclass of dfcompress.components.Distiller"):
        check_distiller(Quiet)


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda b, spec: SynthBatch(b.images * 255, b.labels), r"images must lie in \[0, 1\]"),
        (lambda b, spec: SynthBatch((b.images * 255).to(torch.uint8), b.labels), "images must be float pixels"),
        (lambda b, spec: SynthBatch(b.images[:, :1], b.labels), "images have shape .*expected N x C x H x W"),
        (lambda b, spec: SynthBatch(b.images, torch.zeros_like(b.labels)), "labels .* differ from the requested"),
        (lambda b, spec: SynthBatch(b.images, b.labels.float()), "labels must be a CPU long tensor"),
        (lambda b, spec: SynthBatch(b.images, b.labels, {"loss": torch.tensor(1.0)}), "metrics must map names"),
        (lambda b, spec: (b.images, b.labels), "must return a dfcompress.components.SynthBatch"),
    ],
    ids=["range", "dtype", "shape", "labels", "label-dtype", "metrics", "type"],
)
def test_a_bad_batch_is_named(transform, message):
    def synthesize_batch(self, labels, *, generator, student=None):
        return transform(NoiseSynthesizer.synthesize_batch(self, labels, generator=generator), self.teacher.input)

    with pytest.raises(ContractError, match=message):
        check_synthesizer(broken(synthesize_batch=synthesize_batch))


def test_a_synthesizer_ignoring_the_generator_is_caught():
    def synthesize_batch(self, labels, *, generator, student=None):
        return NoiseSynthesizer.synthesize_batch(self, labels, generator=torch.Generator().manual_seed(0))

    with pytest.raises(ContractError, match="do not depend on the generator"):
        check_synthesizer(broken(synthesize_batch=synthesize_batch))


def test_a_synthesizer_drawing_from_the_global_rng_is_caught():
    def synthesize_batch(self, labels, *, generator, student=None):
        noise = torch.rand(labels.numel(), self.teacher.input.channels, *self.teacher.input.image_size)
        return SynthBatch(noise, labels.cpu())

    with pytest.raises(ContractError, match="not reproducible"):
        check_synthesizer(broken(synthesize_batch=synthesize_batch))


def test_state_that_does_not_resume_is_caught():
    def synthesize_batch(self, labels, *, generator, student=None):
        self.calls = getattr(self, "calls", 0) + 1
        batch = NoiseSynthesizer.synthesize_batch(self, labels, generator=generator)
        return SynthBatch(batch.images * (1.0 / self.calls), batch.labels)

    with pytest.raises(ContractError, match="state_dict\\(\\) does not resume.*declare stateful = True"):
        check_synthesizer(broken(synthesize_batch=synthesize_batch))


def test_hooks_left_on_the_teacher_and_a_changed_teacher_are_caught():
    def setup(self, teacher):
        self.teacher = teacher
        teacher.model[0].register_forward_hook(lambda *args: None)

    with pytest.raises(ContractError, match="hooks left on the teacher after close"):
        check_synthesizer(broken(setup=setup))

    def touch(self, teacher):
        self.teacher = teacher
        with torch.no_grad():
            teacher.model[0].weight.add_(1.0)

    with pytest.raises(ContractError, match="the teacher's weights or buffers changed: 0.weight"):
        check_synthesizer(broken(setup=touch))


def test_a_failing_setup_is_reported_with_the_guides_hint():
    def setup(self, teacher):
        raise FileNotFoundError("no statistics")

    with pytest.raises(ContractError, match=r"setup\(\) on the tiny teacher raised FileNotFoundError: no statistics "
                                            r"\(it declares needs_guides"):
        check_synthesizer(broken(setup=setup, needs_guides=True))


def test_a_student_using_synthesizer_must_not_change_the_student():
    def synthesize_batch(self, labels, *, generator, student=None):
        if student is not None:
            student.eval()
        return NoiseSynthesizer.synthesize_batch(self, labels, generator=generator)

    with pytest.raises(ContractError, match="changed the student's weights, buffers or mode"):
        check_synthesizer(broken(synthesize_batch=synthesize_batch, uses_student=True))


def test_options_reach_the_synthesizer_and_unknown_ones_are_refused():
    seen = {}

    def synthesize_batch(self, labels, *, generator, student=None):
        seen["config"] = self.config
        return NoiseSynthesizer.synthesize_batch(self, labels, generator=generator)

    check_synthesizer(broken(synthesize_batch=synthesize_batch, Config=TwoOptions, iterations_option="iterations"),
                      {"scale": "0.5"})
    assert seen["config"] == TwoOptions(iterations=2, scale=0.5)
    with pytest.raises(ContractError, match="unknown option 'nope'"):
        check_synthesizer(Quiet, {"nope": 1})


class LazyDistiller(KnowledgeDistillation):
    name = "lazy"
    summary = "returns without training"

    def fit(self, student, teacher, images, labels, *, checkpoint=None):
        return {"loss": 0.0}


def test_a_distiller_that_does_not_train_is_caught():
    with pytest.raises(ContractError, match="did not change the student's weights"):
        check_distiller(LazyDistiller)

    class Chatty(LazyDistiller):
        def fit(self, student, teacher, images, labels, *, checkpoint=None):
            super().fit(student, teacher, images, labels)
            with torch.no_grad():
                next(student.parameters()).add_(1)
            return {"loss": "low"}

    with pytest.raises(ContractError, match="fit\\(\\) must map names to finite floats"):
        check_distiller(Chatty)


def test_a_pruner_that_removes_nothing_is_caught():
    from dfcompress.prune.pruners import L1Pruner

    class Idle(L1Pruner):
        name = "idle"
        summary = "keeps everything"

        def prune(self, model, input_spec, *, ratio, ratio_of="channels", batches=None):
            n = sum(p.numel() for p in model.parameters())
            return PruneResult(model, n, n, 1, 1)

    with pytest.raises(ContractError, match="did not remove parameters"):
        check_pruner(Idle)

    class Headless(L1Pruner):
        name = "headless"
        summary = "cuts the head off"

        def prune(self, model, input_spec, *, ratio, ratio_of="channels", batches=None):
            result = super().prune(model, input_spec, ratio=ratio, ratio_of=ratio_of, batches=batches)
            result.model[-1] = nn.Linear(result.model[-1].in_features, 3)
            result.params_after = sum(p.numel() for p in result.model.parameters())
            return result

    with pytest.raises(ContractError, match=r"changed the output shape \(2, 10\) -> \(2, 3\)"):
        check_pruner(Headless)


def test_a_task_without_run_is_caught():
    class Unfinished(Task):
        name = "unfinished"
        summary = "no run()"
        Config = NoOptions

    with pytest.raises(ContractError, match="abstract method\\(s\\) not implemented: run"):
        check_task(Unfinished)


# --------------------------------------------------------------------------- docs: option tables


#: Markdown files with option tables: (path, registry kind, the component of a table whose section
#: heading names none)
DOCS = [
    ("docs/synthesizers.md", "synthesizers", None),
    ("docs/distillation.md", "distillers", "kd"),
    ("docs/pruning.md", "pruners", None),
    ("plugins/dfcompress-example/README.md", "synthesizers", "impressions"),
]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def option_tables(text: str):
    """(section heading, header cells, rows) of every Markdown table whose columns start with option, default."""
    lines, heading = text.splitlines(), ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip().strip("`")
        if line.startswith("|") and _cells(line)[:2] == ["option", "default"]:
            header, rows, i = _cells(line), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield heading, header, rows
            continue
        i += 1


def doc_value(text: str):
    t = text.strip().strip("*`").strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() in ("none", "null"):
        return None
    if t.startswith("(") and t.endswith(")"):
        return tuple(doc_value(v) for v in t[1:-1].split(","))
    if len(t) >= 2 and t[0] == t[-1] == '"':
        return t[1:-1]
    try:
        return float(t)
    except ValueError:
        return t


def same(documented, default) -> bool:
    if isinstance(default, tuple):
        return isinstance(documented, tuple) and len(documented) == len(default) and all(
            same(d, v) for d, v in zip(documented, default))
    if isinstance(default, bool) or isinstance(documented, bool):
        return documented is default
    if isinstance(default, (int, float)) and isinstance(documented, float):
        return math.isclose(documented, default, rel_tol=1e-9)
    return documented == default


def documented_defaults(path: str, kind: str, fallback: str | None, registry) -> dict[str, dict[str, str]]:
    """{component: {option: documented default}} of one file's option tables."""
    known = registry.names(kind)
    found: dict[str, dict[str, str]] = {}
    for heading, header, rows in option_tables((REPO / path).read_text()):
        section = heading if heading in known else fallback
        for row in rows:
            names = [n.strip() for n in re.split(r"[/,]", row[0].replace("`", ""))]
            sep = "/" if "/" in row[0] else ","
            values = [v.strip() for v in row[1].split(sep)] if len(names) > 1 else [row[1]]
            assert len(values) in (1, len(names)), f"{path}: row {row} has {len(names)} options, {len(values)} values"
            values = values * len(names) if len(values) == 1 else values
            if kind in header:  # a column naming the components a row applies to ("all": every one)
                column = row[header.index(kind)]
                owners = known if column == "all" else [c.strip() for c in column.split(",")]
            else:
                owners = [section]
            assert None not in owners, f"{path}: which {kind[:-1]} does the table under '{heading}' describe?"
            for owner in owners:
                found.setdefault(owner, {}).update(zip(names, values))
    return found


@pytest.mark.parametrize("path, kind, fallback", DOCS, ids=[d[0] for d in DOCS])
def test_option_tables_in_the_docs_match_the_config_defaults(path, kind, fallback):
    tables = documented_defaults(path, kind, fallback, REGISTRY)
    assert tables, f"no option table found in {path}"
    problems = []
    for component, documented in tables.items():
        fields = {f.name: f for f in dataclasses.fields(REGISTRY.get(kind, component).Config)}
        for option, text in documented.items():
            if option not in fields:
                problems.append(f"{component}: the table lists '{option}', which is no option")
                continue
            default = fields[option].default
            if not same(doc_value(text), default):
                problems.append(f"{component}.{option}: the table says {text!r}, the default is {default!r}")
        missing = sorted(set(fields) - set(documented))
        if missing:
            problems.append(f"{component}: options missing from the table: {', '.join(missing)}")
    assert not problems, f"{path} is stale:\n  " + "\n  ".join(problems)


def test_doc_table_parsing():
    text = "## natural\n\n| option | default | source |\n| --- | --- | --- |\n" \
           "| lr_a / lr_b | 1e-3 / 5e-4 | x |\n| `jitter`, flip | 2, **true** | |\n| betas | (0.9, 0.999) | |\n"
    (heading, header, rows), = option_tables(text)
    assert heading == "natural" and header == ["option", "default", "source"] and len(rows) == 3
    assert doc_value("(0.9, 0.999)") == (0.9, 0.999) and doc_value("**64**") == 64.0
    assert doc_value('""') == "" and doc_value("`first`") == "first" and doc_value("None") is None
    assert same(64.0, 64) and not same(1.0, True) and same(True, True) and not same(2e-3, 1e-3)
