"""Encryption at rest for connection secrets (Fernet, with key rotation via MultiFernet)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from cur_ray.errors import ConfigurationError


class SecretBox:
    """Encrypts and decrypts secrets with the keys of ``CUR_SECRETS_KEY``.

    The first key encrypts; every key decrypts, so a key can be rotated by putting the new
    key first, running ``cur-ray secrets rotate`` and then removing the old key.
    """

    def __init__(self, keys: str | None) -> None:
        self._keys = [k.strip() for k in (keys or "").split(",") if k.strip()]
        self._fernet: MultiFernet | None = None

    def _box(self) -> MultiFernet:
        if self._fernet is None:
            if not self._keys:
                raise ConfigurationError(
                    "CUR_SECRETS_KEY is not set: it is needed to store or read an external id "
                    "(generate one with `cur-ray secrets generate-key`)"
                )
            try:
                self._fernet = MultiFernet([Fernet(key.encode()) for key in self._keys])
            except ValueError as exc:
                raise ConfigurationError("CUR_SECRETS_KEY is not a valid Fernet key list") from exc
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        """Encrypt ``plaintext`` with the newest key."""
        return self._box().encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Decrypt a token written with any configured key."""
        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ConfigurationError(
                "a stored secret cannot be decrypted with CUR_SECRETS_KEY (wrong or removed key)"
            ) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt a token with the newest key."""
        try:
            return self._box().rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise ConfigurationError(
                "a stored secret cannot be decrypted with CUR_SECRETS_KEY (wrong or removed key)"
            ) from exc


def generate_key() -> str:
    """A new random Fernet key for ``CUR_SECRETS_KEY``."""
    return Fernet.generate_key().decode()
