"""The built-in sub-commands beyond the core ones of :mod:`dfcompress.cli` (``run``, ``synthesize``, ``plugins``,
``models``, ``show``). One rule: every module here is a plugin listed in
:data:`dfcompress.plugins.DEFAULT_PLUGINS` that adds its click commands through the ``register_commands``
hook, exactly like a third-party plugin.

* :mod:`~dfcompress.commands.data` -- ``data verify``, ``data export``, ``data import``;
* :mod:`~dfcompress.commands.stats` -- ``stats collect`` (statistics for ``--synth seeded``);
* :mod:`~dfcompress.commands.bench` -- ``bench``, ``leaderboard``.

Nothing heavy is imported at module level (``dfcompress --help`` stays free of torch): torch, pandas and
matplotlib are imported inside the command functions. Library modules never import this package.
"""

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
