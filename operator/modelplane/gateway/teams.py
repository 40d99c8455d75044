"""Teams: API keys (stored hashed) mapped to a team, with token rate limits and monthly budgets.

A team is a Secret labelled ``modelplane.dev/team: <team>`` in a namespace the gateway serves:

- each value of its ``data`` that starts with ``sha256:`` is the SHA-256 (hex) of one API key of
  the team (``modelplane usage key`` makes a key and prints the line to store); the keys themselves
  are never stored, so a leaked Secret leaks no key;
- annotation ``modelplane.dev/tokens-per-minute``: the most prompt + generated tokens the team's
  answers may have used over the last 60 s before a new request is refused (429
  ``rate_limit_exceeded``); absent: no limit;
- annotation ``modelplane.dev/monthly-budget-usd``: the most US dollars (self-hosted at measured
  $/Mtok plus external at configured prices) the team may spend in a UTC calendar month before a
  new request is refused (429 ``budget_exhausted``); absent: no limit.

With ``modelplane gateway --teams`` every request must carry ``Authorization: Bearer <key>`` of a
known team (401 otherwise). Limits are checked before a request is sent and counted when its answer
is complete, in the usage ledger every gateway process shares (``ledger.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelplane.controller import kube
from modelplane.controller.informer import Informer, Obj
from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.ledger import WINDOW_SECONDS, Ledger, month_of, team_key
from modelplane.gateway.meshroutes import secret_data
from modelplane.gateway.watched import Watched

log = logging.getLogger("modelplane.gateway")

TEAM_LABEL = "modelplane.dev/team"
TOKENS_PER_MINUTE = "modelplane.dev/tokens-per-minute"
MONTHLY_BUDGET = "modelplane.dev/monthly-budget-usd"
HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """What a Secret stores for an API key."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "mp-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Team:
    name: str
    tokens_per_minute: int | None = None
    monthly_budget_usd: float | None = None


def _number(value: Any, kind: type[int] | type[float], where: str) -> int | float | None:
    if value is None:
        return None
    try:
        number = kind(str(value))
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{where}: must be >= 0, got {value!r}")
    return number


def team_from_secret(secret: Mapping[str, Any]) -> tuple[Team, list[str]]:
    """The team a labelled Secret defines, and its key hashes. Raises ``ValueError`` naming the field."""
    meta = secret.get("metadata") or {}
    name = str((meta.get("labels") or {}).get(TEAM_LABEL) or "")
    where = f"Secret {meta.get('namespace')}/{meta.get('name')}"
    if not name:
        raise ValueError(f"{where}: label {TEAM_LABEL} is empty")
    notes = meta.get("annotations") or {}
    tpm = _number(notes.get(TOKENS_PER_MINUTE), int, f"{where}: annotation {TOKENS_PER_MINUTE}")
    budget = _number(notes.get(MONTHLY_BUDGET), float, f"{where}: annotation {MONTHLY_BUDGET}")
    hashes = [v for v in secret_data(secret).values() if v.startswith(HASH_PREFIX)]
    team = Team(name, int(tpm) if tpm is not None else None, float(budget) if budget is not None else None)
    return team, hashes


def build_directory(secrets_: Iterable[Mapping[str, Any]]) -> dict[str, Team]:
    """Key hash → team, from the labelled Secrets (a Secret that does not parse is logged and left out)."""
    out: dict[str, Team] = {}
    for secret in secrets_:
        try:
            team, hashes = team_from_secret(secret)
        except ValueError as exc:
            log.warning("%s; the team is not served", exc)
            continue
        for h in hashes:
            out[h] = team
    return out


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass
class Limiter:
    """Checks a team's token use over the last minute and its spend this month against its limits,
    as the shared ledger counts them (every gateway process's answers; pure: time is given)."""

    ledger: Ledger = field(default_factory=Ledger)

    def tokens_last_minute(self, team: str, now: float) -> int:
        return self.ledger.tokens(team, now=now)

    def check(self, team: Team, *, now: float) -> None:
        """Raise 429 naming the limit the team is past."""
        if team.monthly_budget_usd is not None:
            spent = self.ledger.spent(team_key(team.name), now=now)
            if spent >= team.monthly_budget_usd:
                raise GatewayError(ErrorKind.BUDGET_EXHAUSTED,
                                   f"team {team.name} has spent ${spent:.4f} of its monthly budget of "
                                   f"${team.monthly_budget_usd:g} ({MONTHLY_BUDGET}) for {month_of(now)}",
                                   retry_after=3600)
        if team.tokens_per_minute is not None:
            used = self.tokens_last_minute(team.name, now)
            if used >= team.tokens_per_minute:
                raise GatewayError(ErrorKind.RATE_LIMITED,
                                   f"team {team.name} used {used} tokens in the last minute, its limit is "
                                   f"{team.tokens_per_minute} tokens per minute ({TOKENS_PER_MINUTE})",
                                   retry_after=int(WINDOW_SECONDS))

    def add(self, team: str, *, tokens: int, usd: float, now: float) -> None:
        self.ledger.add_tokens(team, tokens, now=now)
        self.ledger.add(team_key(team), usd, now=now)


class Teams:
    """The directory of keys and the limiter; ``admit`` a request, ``account`` its answer."""

    def __init__(self, directory: Mapping[str, Team] | None = None, *, ledger: Ledger | None = None) -> None:
        self.directory: Mapping[str, Team] = dict(directory or {})
        self.limiter = Limiter(ledger if ledger is not None else Ledger())

    @property
    def synced(self) -> bool:
        return True

    def health(self, now: float | None = None) -> dict[str, float]:
        return {}

    def admit(self, headers: Mapping[str, str], *, now: float | None = None) -> Team:
        key = bearer(headers)
        if key is None:
            raise GatewayError(ErrorKind.INVALID_API_KEY,
                               "this gateway serves teams: send your team's key as "
                               "Authorization: Bearer <key>")
        digest = hash_key(key)
        team = next((t for h, t in self.directory.items() if hmac.compare_digest(h, digest)), None)
        if team is None:
            raise GatewayError(ErrorKind.INVALID_API_KEY, "the API key is not one of a team's keys")
        self.limiter.check(team, now=time.time() if now is None else now)
        return team

    def account(self, team: str, *, tokens: int, usd: float, now: float | None = None) -> None:
        self.limiter.add(team, tokens=tokens, usd=usd, now=time.time() if now is None else now)

    async def run(self) -> None:
        await asyncio.Event().wait()


class ClusterTeams(Watched, Teams):
    """Teams from the labelled Secrets of the namespaces served, kept current by a watch."""

    def __init__(self, client: kube.Kube, namespaces: Sequence[str] = (), *,
                 ledger: Ledger | None = None) -> None:
        super().__init__(ledger=ledger)
        scopes: list[str | None] = list(namespaces) or [None]
        self._informers = [Informer(client, kube.SECRETS, namespace=ns, label_selector=TEAM_LABEL,
                                   handler=self._on_secret) for ns in scopes]

    def _on_secret(self, _: str, __: Obj) -> None:
        self.directory = build_directory(o for i in self.informers for o in i.items())

