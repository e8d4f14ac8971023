"""``limits`` rate-limiter backend for voice-infra (``backend = "limits"``).

Importing this package imports neither ``limits`` nor the backend: discovery loads only
:mod:`voice_infra_limits.plugin`, and the backend module is imported when a configuration
selects it.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
