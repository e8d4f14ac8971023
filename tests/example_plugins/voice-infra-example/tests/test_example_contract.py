"""The example plugin's own tests: the core's conformance suite, nothing else needed."""

import pytest

import voice_infra as vi
from voice_infra.testing import StorageContract


class TestExampleStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self, tmp_path):
        options = {"backend": "example", "path": str(tmp_path / "objects.sqlite3")}
        return vi.create_storage(vi.Settings.from_keywords(storage=options))
