"""Entry point module: declares the backend, imports nothing heavy."""

from __future__ import annotations

from voice_infra import BackendSpec, hookimpl


@hookimpl
def register_storage_backends(register):
    register(
        BackendSpec(
            name="example",
            factory="voice_infra_example.backend:ExampleStorage",
            settings_model="voice_infra_example.backend:ExampleSettings",
            capabilities={"presign"},
            install_hint="pip install voice-infra-example",
            description="Objects in a SQLite file, presigned URLs signed by voice-infra.",
        )
    )
