"""Per-client limits that keep one client from spoiling the game for others.

  * the client's address: `request.remote_addr`, made right behind a proxy by Werkzeug's
    `ProxyFix` trusting CAPTIONARY_TRUSTED_PROXIES hops of X-Forwarded-For/-Proto
    (default 0: trust none, so a client cannot claim another address by sending the header);
  * open websockets per player (CAPTIONARY_WS_PER_PLAYER, default 8) and per address
    (CAPTIONARY_WS_PER_ADDRESS, default 32): over the cap the upgrade is refused with HTTP
    429 `too_many_connections` before the socket is accepted;
  * new anonymous players (player cookies minted) per address: a token bucket of
    CAPTIONARY_NEW_PLAYER_RATE per second, bursts of CAPTIONARY_NEW_PLAYER_BURST, else 429
    `too_many_new_players` (each identity has its own draft, submission and cap budgets, so
    minting them freely would bypass those).

Slots are counted in Redis, not per process, so the caps hold across every web process: a
sorted set per player and per address, member = connection id, score = lease expiry. A
socket renews its lease every RENEW_S (game/web/ws.py's sender thread) and releases it on close;
a process that dies without releasing leaves slots that expire after LEASE_S, never forever.
A limit of 0 turns that cap off.
"""
from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass

import redis

log = logging.getLogger("captionary.connlimits")

LEASE_S = 90.0  # a slot not renewed for this long is free again (its process died)
RENEW_S = 30.0  # how often an open socket renews its slots: three chances per lease

# KEYS: the slot sets (member -> lease expiry, unix seconds). ARGV: member, now, expiry,
# lease ms, then one limit per key (0 = no cap). Returns 0 when taken, else the 1-based
# index of the first key that is full. One script, so two sockets racing for the last slot
# cannot both get it, and a refused socket takes no slot on the other key.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  local limit = tonumber(ARGV[4 + i])
  if limit > 0 and redis.call('ZCARD', key) >= limit then return i end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[3], ARGV[1])
  redis.call('PEXPIRE', key, ARGV[4])
end
return 0
"""


class TooManyConnections(Exception):
    """Over a websocket cap; `which` is "player" or "address"."""

    def __init__(self, which: str, limit: int):
        super().__init__(f"too many open connections for this {which} (the limit is {limit})")
        self.which, self.limit = which, limit


@dataclass
class Slot:
    """One socket's place under the caps; `keys` empty when Redis could not record it."""

    member: str
    keys: tuple


class ConnLimits:
    """The websocket caps, counted in Redis with expiring leases."""

    def __init__(self, redis_client, per_player: int = 8, per_address: int = 32, lease_s: float = LEASE_S):
        self.r = redis_client
        self.per_player, self.per_address = int(per_player), int(per_address)
        self.lease_s = float(lease_s)
        self._acquire = self.r.register_script(_ACQUIRE)

    @staticmethod
    def player_key(player_id: str) -> str:
        return f"cap:ws:player:{player_id}"

    @staticmethod
    def address_key(address: str) -> str:
        return f"cap:ws:addr:{address}"

    def acquire(self, player_id: str, address: str) -> Slot:
        """A slot for a new socket, or TooManyConnections. Fails open when Redis is unavailable:
        a Redis blip must not lock every player out (the socket's actions report it anyway)."""
        keys = (self.player_key(player_id), self.address_key(address or "unknown"))
        member = secrets.token_hex(8)
        now = time.time()
        try:
            full = int(self._acquire(keys=list(keys), args=[
                member, now, now + self.lease_s, math.ceil(self.lease_s * 1000), self.per_player, self.per_address]))
        except redis.exceptions.RedisError as exc:  # never a 500 on the handshake
            log.warning("connection caps not checked, Redis unavailable: %s", exc)
            return Slot(member, ())
        if full == 1:
            raise TooManyConnections("player", self.per_player)
        if full == 2:
            raise TooManyConnections("address", self.per_address)
        return Slot(member, keys)

    def renew(self, slot: Slot) -> None:
        """Push the slot's lease forward (the socket is still open)."""
        if not slot.keys:
            return
        expiry = time.time() + self.lease_s
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for key in slot.keys:
                    pipe.zadd(key, {slot.member: expiry}, xx=True)
                    pipe.pexpire(key, math.ceil(self.lease_s * 1000))
                pipe.execute()
        except redis.exceptions.RedisError as exc:  # the lease simply runs out if Redis stays away
            log.debug("could not renew a connection slot: %s", exc)

    def release(self, slot: Slot) -> None:
        if not slot.keys:
            return
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for key in slot.keys:
                    pipe.zrem(key, slot.member)
                pipe.execute()
        except redis.exceptions.RedisError as exc:  # expires with its lease
            log.warning("could not release a connection slot (it expires in %.0fs): %s", self.lease_s, exc)

    def count(self, *, player_id: str | None = None, address: str | None = None) -> int:
        """Live slots of a player or an address (tests, the admin)."""
        key = self.player_key(player_id) if player_id is not None else self.address_key(address)
        return int(self.r.zcount(key, time.time(), "+inf"))


def count_refusal(app, action: str, code: str) -> None:
    """Count a refusal in /metrics (captionary_actions_refused_total{action,code}) when ops is on."""
    metrics = app.extensions.get("metrics")
    if metrics is not None:
        metrics.refused.labels(action, code).inc()


def client_address(req) -> str:
    """The client's address as ProxyFix left it (the proxy's own address when none is trusted)."""
    return req.remote_addr or "unknown"


def may_mint_player(app, address: str) -> bool:
    """Whether this address may get one more new anonymous player now (token bucket in Redis)."""
    store = app.extensions["store"]
    try:
        return store.take_token(f"newplayers:{address}", app.config["NEW_PLAYER_RATE"],
                                app.config["NEW_PLAYER_BURST"])
    except redis.exceptions.RedisError:
        return True  # fail open: the page itself reports Redis trouble; a cookie costs nothing stored


def init_app(app) -> None:
    # The settings were checked with all the others (game/config.py finish()).
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix
        # X-Forwarded-For and -Proto only: the sample nginx passes Host itself, and trusting
        # X-Forwarded-Host would let the Origin check be steered by a header.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0)
    app.extensions["conn_limits"] = ConnLimits(app.extensions["redis"], app.config["WS_PER_PLAYER"],
                                               app.config["WS_PER_ADDRESS"])
