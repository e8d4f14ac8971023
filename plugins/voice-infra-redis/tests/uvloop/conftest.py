"""The tests in this folder run on uvloop's event loop instead of asyncio's own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    # A conftest hook applies to the items of its folder only.
    return {"uvloop": uvloop.new_event_loop}
