"""Small factories: the fewest fields a test needs, the rest defaulted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memories.models import Account, ApiKey, Memory, content_hash


@dataclass
class AccountWithKey:
    account: Account
    key: ApiKey
    raw_key: str


def make_account(name: str = "acme") -> AccountWithKey:
    account = Account.objects.create(name=name)
    key, raw_key = ApiKey.generate(account=account, name=f"{name}-key")
    return AccountWithKey(account=account, key=key, raw_key=raw_key)


def make_memory(account: Account, content: str = "User prefers tea", *, user_id: str = "u1", **fields: Any) -> Memory:
    """A row written directly, without embedding: for tests of reads and admin, not of writes."""
    return Memory.objects.create(
        account=account, user_id=user_id, content=content, content_hash=content_hash(content), **fields
    )
