"""Who a labeler is: taken from the credential they present, never from what a request body claims.

Each labeler has a token of their own; a file keeps only the tokens' SHA-256 digests
(``sensorloop label add-labeler NAME`` writes one and prints the token once). A single shared token
(``--token`` / ``$SENSORLOOP_LABEL_TOKEN``) still works for one person or a demo: whoever holds it is
the labeler ``labeling.shared_labeler``.

>>> creds = Credentials({"alice": digest("a" * 24)}, shared_token="s" * 20, shared_labeler="demo")
>>> creds.labeler_of("a" * 24), creds.labeler_of("s" * 20), creds.labeler_of("nope")
('alice', 'demo', None)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from pathlib import Path

MIN_TOKEN_LENGTH = 16


class CredentialError(ValueError):
    """A credentials file or token that cannot be used, with the reason."""


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str, what: str = "token") -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise CredentialError(f"{what} is {len(token)} characters long; at least {MIN_TOKEN_LENGTH} are needed")
    return token


class Credentials:
    """Labeler name → token digest, plus an optional shared token."""

    def __init__(self, digests: dict[str, str], shared_token: str = "", shared_labeler: str = "labeler",
                 behind_proxy: bool = False) -> None:
        if not digests and not shared_token and not behind_proxy:
            raise CredentialError("no labeler can sign in: add labelers (sensorloop labeler add NAME), "
                                  "give a shared token (--token or $SENSORLOOP_LABEL_TOKEN) "
                                  "or name the sign-on proxy's header (labeling.user_header)")
        if shared_token:
            check_token(shared_token, "the shared token")
        self.by_digest = {d: name for name, d in digests.items()}
        self.shared = digest(shared_token) if shared_token else None
        self.shared_labeler = shared_labeler

    def labeler_of(self, token: str) -> str | None:
        """The labeler this token belongs to, or None (compared in constant time per candidate)."""
        if not token:
            return None
        given = digest(token)
        for known, name in self.by_digest.items():
            if hmac.compare_digest(given, known):
                return name
        if self.shared is not None and hmac.compare_digest(given, self.shared):
            return self.shared_labeler
        return None

    @classmethod
    def load(cls, path: str, shared_token: str = "", shared_labeler: str = "labeler",
             behind_proxy: bool = False) -> "Credentials":
        digests: dict[str, str] = {}
        if path:
            try:
                data = tomllib.loads(Path(path).read_text()).get("labelers", {})
            except FileNotFoundError:
                data = {}
            except tomllib.TOMLDecodeError as exc:
                raise CredentialError(f"{path}: not valid TOML: {exc}") from None
            for name, value in data.items():
                if not (isinstance(value, str) and value.startswith("sha256:") and len(value) == 71):
                    raise CredentialError(f"{path}: labelers.{name}: expected \"sha256:<64 hex digits>\"")
                digests[name] = value
        return cls(digests, shared_token, shared_labeler, behind_proxy)


def add_labeler(path: str, name: str) -> str:
    """Give ``name`` a new token (returned; only its digest is stored in ``path``)."""
    from schemas import SchemaError
    from schemas.base import require_id

    try:
        require_id({"labeler": name}, "labeler", max_len=64)
    except SchemaError as exc:
        raise CredentialError(str(exc)) from None
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise CredentialError(f"labeler: {name!r} must be letters, digits, '-', '_' or '.'")
    file = Path(path)
    lines = file.read_text().splitlines() if file.exists() else ["[labelers]"]
    token = secrets.token_urlsafe(24)
    lines = [line for line in lines if not line.strip().startswith(f"{name} =")] + [f'{name} = "{digest(token)}"']
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join(lines) + "\n")
    file.chmod(0o600)
    return token
