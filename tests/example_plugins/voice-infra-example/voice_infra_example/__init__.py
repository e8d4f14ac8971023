"""An example third-party voice-infra plugin (see docs/writing-plugins.md)."""
