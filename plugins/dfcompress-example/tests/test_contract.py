"""The dfcompress plugin contract, checked with dfcompress's own test kit (``dfcompress.testing``): what
every synthesizer must do (options, capabilities, batch shape, range, labels, seeds, state, a teacher left
untouched), on dfcompress's tiny teacher, in well under a second."""
from __future__ import annotations

import pytest
from dfcompress_example.impressions import ClassImpressions

from dfcompress.testing import check_registered, check_synthesizer


def test_impressions_honours_the_synthesizer_contract():
    batch = check_synthesizer(ClassImpressions)
    assert batch.metrics["iterations"] == 2  # the kit sets the declared iterations_option


@pytest.mark.parametrize("options", [{"dirichlet_beta": "0"}, {"class_similarity": "false", "jitter": "0"}])
def test_the_contract_holds_for_other_options(options):
    check_synthesizer(ClassImpressions, options)


def test_registered_name_and_summary_are_the_class_s_own(monkeypatch):
    from dfcompress.plugins import build_registry, get_plugin_manager

    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "example")
    registry = build_registry(get_plugin_manager())
    assert check_registered("synthesizers", "impressions", registry) is ClassImpressions
