"""A plugin whose hook raises."""

from voice_infra import hookimpl


@hookimpl
def register_rate_limiter_backends(register):
    raise RuntimeError("the broken-hook plugin cannot start")
