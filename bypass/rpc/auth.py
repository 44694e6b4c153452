"""Shared-secret challenge-response (HMAC-SHA256), both directions.

Neither side ever sends the secret.  The shadow's greeting carries a fresh nonce; the agent
answers with its own nonce and HMAC(secret, "bypass-agent\\0" | snonce | cnonce | spec); the
shadow answers with HMAC(secret, "bypass-shadow\\0" | cnonce | snonce | spec), so the agent
also knows it reached the real shadow.  Nonces make every proof single-use.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from .protocol import ENV_SECRET, ENV_SECRET_FILE, NONCE_SIZE


def nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes, spec: str) -> bytes:
    return hmac.new(secret, label + b"\0" + first + second + spec.encode(), hashlib.sha256).digest()


def agent_proof(secret: bytes, snonce: bytes, cnonce: bytes, spec: str) -> bytes:
    return _mac(secret, b"bypass-agent", snonce, cnonce, spec)


def shadow_proof(secret: bytes, snonce: bytes, cnonce: bytes, spec: str) -> bytes:
    return _mac(secret, b"bypass-shadow", cnonce, snonce, spec)


def check(expected: bytes, got) -> bool:
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)


def secret_from_env(environ=os.environ) -> bytes | None:
    """The shared secret from BYPASS_SHADOW_SECRET or the file BYPASS_SHADOW_SECRET_FILE."""
    if environ.get(ENV_SECRET):
        return environ[ENV_SECRET].encode()
    path = environ.get(ENV_SECRET_FILE)
    if path:
        with open(path, "rb") as f:
            return f.read().strip()
    return None


def new_secret() -> str:
    """A fresh random secret, printable (for an environment variable)."""
    return os.urandom(24).hex()
