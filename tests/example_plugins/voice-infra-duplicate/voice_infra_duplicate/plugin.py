"""A plugin declaring a backend name that voice-infra-example declares too."""

from voice_infra import BackendSpec, hookimpl


@hookimpl
def register_storage_backends(register):
    register(
        BackendSpec(
            name="example",
            factory="voice_infra.backends.memory:MemoryStorage",
            settings_model="voice_infra.backends.memory:MemoryStorageSettings",
        )
    )
    register(
        BackendSpec(
            name="needs-lib",
            factory="voice_infra_not_installed.backend:Store",
            settings_model="voice_infra.storage:StorageSettings",
            install_hint="pip install voice-infra-not-installed",
        )
    )
