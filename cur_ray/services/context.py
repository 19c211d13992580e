"""What every use case needs: settings, the process's database, the credential cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cur_ray.adapters.aws import CredentialProvider
from cur_ray.adapters.db.engine import Database
from cur_ray.settings import Settings, get_settings


@dataclass
class AppContext:
    """Process-wide dependencies of the services (one engine per process)."""

    settings: Settings
    db: Database
    credentials: CredentialProvider

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        """Build the engine and credential cache for ``settings``."""
        return cls(
            settings=settings,
            db=Database.from_url(settings.database_url),
            credentials=CredentialProvider(settings),
        )

    def close(self) -> None:
        """Release pooled database connections."""
        self.db.dispose()


_default: AppContext | None = None
_lock = threading.Lock()


def default_context() -> AppContext:
    """The context of this process, built from the environment on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = AppContext.from_settings(get_settings())
        return _default
