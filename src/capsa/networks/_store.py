"""The networks' SQLite tables: networks, attachments (with their addresses), small state.

Uniqueness is the database's job, not the caller's: ``(network, slot)``, the IP
address, the host-side veth name and the namespace path are each UNIQUE, so two
attachments can never share an address even if the allocation code were wrong.
Allocation itself runs inside one ``BEGIN IMMEDIATE`` transaction, which
serialises allocators across threads and processes.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from capsa.errors import AlreadyExists, Conflict, LimitExceeded
from capsa.state import Database

__all__ = ["AttachmentRow", "NetworkRow", "Store"]

MIGRATIONS = [
    """
    CREATE TABLE networks (
        name       TEXT PRIMARY KEY,
        kind       TEXT NOT NULL CHECK (kind IN ('bridge', 'isolated')),
        cidr       TEXT NOT NULL,
        slot_bits  INTEGER NOT NULL,          -- prefix length of one slot: 32 (a host) or 30/31 (a block)
        bridge     TEXT UNIQUE,               -- NULL for the isolated pool
        builtin    INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE network_attachments (
        job_id     TEXT PRIMARY KEY,
        mode       TEXT NOT NULL CHECK (mode IN ('none', 'isolated', 'bridge')),
        network    TEXT REFERENCES networks(name),
        slot       INTEGER,
        ip         TEXT UNIQUE,
        prefixlen  INTEGER,
        gateway    TEXT,
        veth_host  TEXT UNIQUE,
        netns_path TEXT NOT NULL UNIQUE,
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready')),
        created_ns INTEGER NOT NULL,
        UNIQUE (network, slot)
    );
    CREATE TABLE network_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class NetworkRow:
    name: str
    kind: str
    cidr: str
    slot_bits: int
    bridge: str | None
    builtin: bool
    created_ns: int


@dataclass(frozen=True)
class AttachmentRow:
    job_id: str
    mode: str
    network: str | None
    slot: int | None
    ip: str | None
    prefixlen: int | None
    gateway: str | None
    veth_host: str | None
    netns_path: str
    state: str


def _network(row: sqlite3.Row) -> NetworkRow:
    return NetworkRow(row["name"], row["kind"], row["cidr"], row["slot_bits"], row["bridge"],
                      bool(row["builtin"]), row["created_ns"])


def _attachment(row: sqlite3.Row) -> AttachmentRow:
    return AttachmentRow(row["job_id"], row["mode"], row["network"], row["slot"], row["ip"], row["prefixlen"],
                         row["gateway"], row["veth_host"], row["netns_path"], row["state"])


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("networks", MIGRATIONS)

    # -- small state -------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self.db.query_one("SELECT value FROM network_state WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_state(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM network_state WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO network_state(key, value) VALUES(?, ?)"
                            " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def instance_id(self) -> str:
        """A random id naming this database's kernel objects (link aliases, rule comments)."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT value FROM network_state WHERE key = 'instance'").fetchone()
            if row is not None:
                return str(row["value"])
            value = secrets.token_hex(4)
            conn.execute("INSERT INTO network_state(key, value) VALUES('instance', ?)", (value,))
            return value

    # -- networks ----------------------------------------------------------------------
    def networks(self) -> list[NetworkRow]:
        return [_network(r) for r in self.db.query("SELECT * FROM networks ORDER BY builtin DESC, name")]

    def network(self, name: str) -> NetworkRow | None:
        row = self.db.query_one("SELECT * FROM networks WHERE name = ?", (name,))
        return None if row is None else _network(row)

    def upsert_builtin(self, row: NetworkRow) -> NetworkRow | None:
        """Record a built-in network's current config; returns the previous row if it differed."""
        with self.db.tx() as conn:
            old = conn.execute("SELECT * FROM networks WHERE name = ?", (row.name,)).fetchone()
            conn.execute(
                "INSERT INTO networks(name, kind, cidr, slot_bits, bridge, builtin, created_ns)"
                " VALUES(?, ?, ?, ?, ?, 1, ?) ON CONFLICT(name) DO UPDATE SET"
                " kind = excluded.kind, cidr = excluded.cidr, slot_bits = excluded.slot_bits,"
                " bridge = excluded.bridge",
                (row.name, row.kind, row.cidr, row.slot_bits, row.bridge, time.time_ns()),
            )
        if old is None:
            return None
        previous = _network(old)
        same = (previous.cidr, previous.slot_bits, previous.bridge) == (row.cidr, row.slot_bits, row.bridge)
        return None if same else previous

    def insert_network(self, row: NetworkRow) -> None:
        try:
            self.db.execute(
                "INSERT INTO networks(name, kind, cidr, slot_bits, bridge, builtin, created_ns)"
                " VALUES(?, ?, ?, ?, ?, 0, ?)",
                (row.name, row.kind, row.cidr, row.slot_bits, row.bridge, row.created_ns),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"network {row.name!r} already exists") from exc

    def delete_network(self, name: str) -> list[str]:
        """Delete a user network unless jobs are attached; returns those job ids (then nothing is deleted)."""
        with self.db.tx() as conn:
            users = [r[0] for r in conn.execute(
                "SELECT job_id FROM network_attachments WHERE network = ? ORDER BY job_id", (name,))]
            if not users:
                conn.execute("DELETE FROM networks WHERE name = ? AND builtin = 0", (name,))
            return users

    def attached_counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT network, COUNT(*) AS n FROM network_attachments"
                             " WHERE network IS NOT NULL GROUP BY network")
        return {str(r["network"]): int(r["n"]) for r in rows}

    def attached_count(self, network: str) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM network_attachments WHERE network = ?", (network,))
        return int(row["n"]) if row else 0

    # -- attachments -------------------------------------------------------------------
    def attachments(self) -> list[AttachmentRow]:
        return [_attachment(r) for r in self.db.query("SELECT * FROM network_attachments ORDER BY job_id")]

    def attachment(self, job_id: str) -> AttachmentRow | None:
        row = self.db.query_one("SELECT * FROM network_attachments WHERE job_id = ?", (job_id,))
        return None if row is None else _attachment(row)

    def reserve(
        self,
        job_id: str,
        mode: str,
        netns_path: str,
        *,
        network: str | None = None,
        slots: range | None = None,
        address_of: Callable[[int], tuple[str, int, str]] | None = None,
        veth_host: str | None = None,
    ) -> AttachmentRow:
        """Insert an attachment in state ``creating``, with the next free slot of ``network``.

        ``address_of(slot) -> (ip, prefixlen, gateway)`` turns the slot into addresses.
        Slots are handed out round-robin (a cursor per network) rather than lowest
        first, so a just-freed address is not reused at once while peers may still
        hold it in their ARP caches.
        """
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM network_attachments WHERE job_id = ?", (job_id,)).fetchone():
                raise AlreadyExists(f"job {job_id} is already attached to a network")
            slot = ip = prefixlen = gateway = None
            if network is not None and slots is not None and address_of is not None:
                slot = self._next_slot(conn, network, slots)
                ip, prefixlen, gateway = address_of(slot)
            try:
                conn.execute(
                    "INSERT INTO network_attachments(job_id, mode, network, slot, ip, prefixlen, gateway,"
                    " veth_host, netns_path, state, created_ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, 'creating', ?)",
                    (job_id, mode, network, slot, ip, prefixlen, gateway, veth_host, netns_path, time.time_ns()),
                )
            except sqlite3.IntegrityError as exc:
                # The network was removed meanwhile (foreign key), or a name clash on veth/netns path.
                raise Conflict(f"cannot attach job {job_id} to {network or mode}: {exc}") from exc
            row = conn.execute("SELECT * FROM network_attachments WHERE job_id = ?", (job_id,)).fetchone()
            return _attachment(row)

    def _next_slot(self, conn: sqlite3.Connection, network: str, slots: range) -> int:
        used = {r[0] for r in conn.execute(
            "SELECT slot FROM network_attachments WHERE network = ? AND slot IS NOT NULL", (network,))}
        key = f"cursor:{network}"
        row = conn.execute("SELECT value FROM network_state WHERE key = ?", (key,)).fetchone()
        last = int(row["value"]) if row else slots.start - 1
        start = last + 1 if slots.start <= last + 1 < slots.stop else slots.start
        for candidate in _wrap(slots, start):
            if candidate not in used:
                conn.execute("INSERT INTO network_state(key, value) VALUES(?, ?)"
                             " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(candidate)))
                return candidate
        raise LimitExceeded(f"network {network!r} has no free address left ({len(slots)} in use)")

    def mark_ready(self, job_id: str) -> None:
        self.db.execute("UPDATE network_attachments SET state = 'ready' WHERE job_id = ?", (job_id,))

    def delete_attachment(self, job_id: str) -> None:
        self.db.execute("DELETE FROM network_attachments WHERE job_id = ?", (job_id,))


def _wrap(slots: range, start: int) -> Iterable[int]:
    yield from range(start, slots.stop)
    yield from range(slots.start, start)
