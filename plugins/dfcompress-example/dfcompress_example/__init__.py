"""dfcompress-example: a third-party dfcompress plugin that adds the ``impressions`` synthesizer.

This module is what the entry point ``example = "dfcompress_example"`` (group ``dfcompress``) loads. It
only imports :data:`dfcompress.hookimpl` and registers its synthesizer as a lazy ``"module:Class"``
string, so listing plugins (``dfcompress plugins``) never imports torch; the class itself is imported
the first time someone asks for ``impressions``.
"""
from dfcompress import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_synthesizers(register):
    register(
        "dfcompress_example.impressions:ClassImpressions",
        name="impressions",
        aliases=("zskd",),
        summary="ZSKD data impressions: pixels fit to Dirichlet soft labels at temperature T "
        "(no BatchNorm statistics, any teacher)",
    )
