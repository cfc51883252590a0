"""Who may call `stagewise serve`: tenants, their bearer tokens, daily budgets and rates.

A tokens file (`stagewise serve --tokens FILE`) is TOML, one table per tenant:

```toml
[tenants.acme]
token_env = "ACME_TOKEN"      # the token in this environment variable ...
daily_budget_usd = 2.50       # optional: else --daily-budget (none: unlimited)
rate = 120                    # optional: requests per minute, else --rate

[tenants.globex]
token = "a-long-random-token" # ... or in the file itself (keep the file private)
```

A request's bearer token is compared with every tenant's in constant time
(`hmac.compare_digest`, all of them, whichever matches). Tenant names appear in budget
messages, logs and store keys; tokens never do.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from stagewise.errors import ConfigError
from stagewise.tomlfiles import read_toml

__all__ = ["Tenant", "match_token", "read_tokens"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_KEYS = {"token", "token_env", "daily_budget_usd", "rate"}
MIN_TOKEN_LENGTH = 8


@dataclass(frozen=True)
class Tenant:
    """One caller of the API: its name, bearer token, daily budget (USD) and rate (requests per minute)."""

    name: str
    token: str = ""  # empty: no token (a client address, with --no-auth)
    daily_budget_usd: float | None = None
    rate: int | None = None

    def __repr__(self) -> str:  # never the token
        return f"Tenant(name={self.name!r}, daily_budget_usd={self.daily_budget_usd!r}, rate={self.rate!r})"


def read_tokens(path: str | Path) -> list[Tenant]:
    """The tenants of a tokens file (see the module).

    Raises:
        ConfigError: the file is missing or invalid; the message names the file and the key at fault.
    """
    path = Path(path)
    where = f"tokens file {str(path)!r}"
    document = read_toml(path, where, ConfigError)
    unknown = set(document) - {"tenants"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected [tenants.NAME] tables)")
    tables = document.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{where}: no [tenants.NAME] table")
    tenants, owners = [], {}
    for name, entry in tables.items():
        key = f"tenants.{name}"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: {key}: a tenant name is 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {key} must be a table")
        extra = set(entry) - _KEYS
        if extra:
            raise ConfigError(f"{where}: {key}.{sorted(extra)[0]}: unknown key (expected {', '.join(sorted(_KEYS))})")
        if ("token" in entry) == ("token_env" in entry):
            raise ConfigError(f"{where}: {key}: give exactly one of token and token_env")
        if "token_env" in entry:
            variable = entry["token_env"]
            if not isinstance(variable, str) or not variable:
                raise ConfigError(f"{where}: {key}.token_env must be the name of an environment variable")
            token = os.environ.get(variable, "")
            if not token:
                raise ConfigError(f"{where}: {key}.token_env: ${variable} is not set")
        else:
            token = entry["token"]
            if not isinstance(token, str):
                raise ConfigError(f"{where}: {key}.token must be a string")
        if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
            raise ConfigError(f"{where}: {key}: the token must be at least {MIN_TOKEN_LENGTH} characters, "
                              "without surrounding spaces")
        budget = entry.get("daily_budget_usd")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0):
            raise ConfigError(f"{where}: {key}.daily_budget_usd must be a number >= 0, got {budget!r}")
        rate = entry.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 1):
            raise ConfigError(f"{where}: {key}.rate must be a whole number of requests per minute >= 1, "
                              f"got {rate!r}")
        if token in owners:
            raise ConfigError(f"{where}: {key} has the same token as tenants.{owners[token]}")
        owners[token] = name
        tenants.append(Tenant(name, token, None if budget is None else float(budget), rate))
    return tenants


def match_token(tenants: list[Tenant], given: str) -> Tenant | None:
    """The tenant whose token is `given`, comparing with every tenant's in constant time."""
    found = None
    for tenant in tenants:
        if hmac.compare_digest(tenant.token.encode(), given.encode()) and tenant.token:
            found = tenant
    return found
