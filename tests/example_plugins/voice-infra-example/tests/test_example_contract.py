"""The example plugin's own tests: the core's conformance suite, nothing else needed."""

import pytest

import voice_infra as vi
from voice_infra.testing import StorageContract


class TestExampleStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self):
        return vi.create_storage(vi.Settings(storage={"backend": "example"}))
