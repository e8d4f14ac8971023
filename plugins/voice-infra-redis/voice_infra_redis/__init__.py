"""Redis rate-limiter and cache backends for voice-infra (``backend = "redis"``).

Importing this package imports neither ``redis`` nor the backend: discovery loads only
:mod:`voice_infra_redis.plugin`, and the backend module is imported when a configuration
selects it.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
