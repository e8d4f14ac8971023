"""S3 / MinIO storage backend for voice-infra.

Importing this package stays cheap: the backend (and aiobotocore) lives in
:mod:`voice_infra_s3.backend`, imported only when a configuration selects ``s3``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
