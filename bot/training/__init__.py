"""Training uploads for `/train`: safe intake of a photo zip and a guarded download of a linked zip.

Both are independent of Discord. `prepare_dataset` is synchronous (call it via asyncio.to_thread);
`download_zip` is a coroutine.
"""

from .download import DownloadError, download_zip
from .intake import IntakeError, IntakeLimits, IntakeReport, prepare_dataset

__all__ = ["DownloadError", "IntakeError", "IntakeLimits", "IntakeReport", "download_zip", "prepare_dataset"]
