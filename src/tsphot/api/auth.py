"""Accounts and API tokens: a token is shown once and stored only as its SHA-256.

Tokens are 256 random bits, so a plain SHA-256 is enough to make a stolen database useless
(there is nothing to guess); a slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tsphot.api.models import Token, User
from tsphot.errors import SettingsError

TOKEN_PREFIX = "tsp_"


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh random token (shown to its owner once)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is asking: the user's id, name and whether they are an admin."""

    id: int
    name: str
    is_admin: bool


def add_user(
    session: Session, name: str, admin: bool = False, quota_bytes: int | None = None
) -> str:
    """Create a user with one token; return the token (its only appearance in clear)."""
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise SettingsError(f"user name {name!r}: use 1-64 letters, digits or . _ - @ (no spaces)")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise SettingsError(
            f"user {name!r} exists already: `tsphot users token {name}` adds a token"
        )
    user = User(name=name, is_admin=admin, quota_bytes=quota_bytes)
    session.add(user)
    session.flush()
    token = new_token()
    session.add(Token(user_id=user.id, token_hash=hash_token(token), label="created with user"))
    session.commit()
    return token


def add_token(session: Session, name: str, label: str = "") -> str:
    """Give an existing user another token; return it."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise SettingsError(f"no user {name!r}: `tsphot users add {name}` creates one")
    token = new_token()
    session.add(Token(user_id=user.id, token_hash=hash_token(token), label=label))
    session.commit()
    return token


def revoke_tokens(session: Session, name: str) -> int:
    """Remove every token of a user; return how many there were."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise SettingsError(f"no user {name!r}")
    tokens = session.scalars(select(Token).where(Token.user_id == user.id)).all()
    for t in tokens:
        session.delete(t)
    session.commit()
    return len(tokens)


def lookup(session: Session, token: str) -> Principal | None:
    """The user a token belongs to, or None."""
    row = session.execute(
        select(User.id, User.name, User.is_admin)
        .join(Token, Token.user_id == User.id)
        .where(Token.token_hash == hash_token(token))
    ).first()
    return None if row is None else Principal(row.id, row.name, row.is_admin)
