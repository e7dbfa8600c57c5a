"""Built-in sub-commands added through the ``register_commands`` hook (torch is imported inside them)."""
from dfcompress import hookimpl


@hookimpl
def register_commands(cli):
    from dfcompress.synth.stats_command import stats

    cli.add_command(stats)
