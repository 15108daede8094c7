"""The W3C ``baggage`` header, read and written as the W3C Baggage specification says. Pure logic.

This is the reference reading every other reader in the sidecar is proven equal to (the tenant
extractor's fast path, the delivery's forwarded header, the publish endpoint's merge). It follows
the specification's grammar::

    baggage-string = list-member 0*179( OWS "," OWS list-member )
    list-member    = key OWS "=" OWS value *( OWS ";" OWS property )
    property       = key OWS "=" OWS value / key OWS
    key            = token                       ; RFC 9110 tchar: ! # $ % & ' * + - . ^ _ ` | ~ DIGIT ALPHA
    value          = *baggage-octet              ; %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
    OWS            = *( SP / HTAB )

and its rules for what the grammar leaves open:

- Whitespace (SP, HTAB) around members, keys, ``=``, values and properties is not part of them.
- A member's value ends at its first ``;``: what follows are the member's properties, which never
  change the value (OpenTelemetry Python keeps them inside the value; Java, JavaScript, Go and
  .NET do not, and neither do we).
- Values are percent-decoded (RFC 3986: ``+`` is a plus sign, not a space; an escape that is
  not two hex digits is kept as written); escaped bytes that are not UTF-8 become U+FFFD.
  Keys are tokens and are taken as written: ``ten%61nt`` is not ``tenant``.
- Several ``baggage`` headers are one baggage-string, joined by commas in their order (the
  specification's rule for HTTP, which we apply to a record's Kafka headers too).
- A key may appear more than once; the last valid member of a key wins, as in every
  OpenTelemetry SDK.

What the grammar does not allow is dealt with member by member, so one bad member never costs
another member its value: a member whose key is not a token, that has no ``=``, or whose value
has a byte outside baggage-octet (a raw space, a quote, a control, any non-ASCII byte) is
invalid and ignored; a property that is not valid is dropped from its member, which stays.
Blank members (``a=1,,b=2``) are not members at all.

Limits: the specification requires propagating at least 64 members and 8192 bytes and lets a
platform drop members beyond, in any order, never forwarding a partial member; its grammar
allows 180 members. A baggage-string over 8192 bytes or with more than 180 members is, for us,
too large as a whole: it is read as no baggage at all (no tenant) and not forwarded, which is
what OpenTelemetry Python and Go do with it. Dropping some members instead would make the
tenant depend on which ones were dropped.

:func:`parse` reads a header, :meth:`Baggage.get` looks a key up, :meth:`Baggage.to_header`
writes the equivalent canonical header (valid members only, whitespace removed, each member's
bytes otherwise as they came, so every value decodes to what it did), and :func:`encode_value`
percent-encodes a value for a new member.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

HEADER = "baggage"
# The specification's limits (see the module doc): bytes of the whole baggage-string, members.
MAX_BYTES = 8192
MAX_MEMBERS = 180

OWS = b" \t"
# RFC 9110 tchar: what a key may be made of.
TOKEN_BYTES = ("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters).encode("ascii")
# baggage-octet: US-ASCII without controls, whitespace, DQUOTE, comma, semicolon and backslash.
VALUE_BYTES = bytes([0x21, *range(0x23, 0x2C), *range(0x2D, 0x3B), *range(0x3C, 0x5C), *range(0x5D, 0x7F)])
# What encode_value leaves as it is: baggage-octets but '%', which must always be escaped.
_UNESCAPED = frozenset(chr(c) for c in VALUE_BYTES if c != ord("%"))


def is_token(key: str) -> bool:
    """Whether ``key`` is a valid baggage key (an RFC 9110 token)."""
    return bool(key) and key.isascii() and not key.encode("ascii").translate(None, TOKEN_BYTES)


def decode_value(raw: bytes) -> str:
    """A member's value as text: percent-decoded, escapes of bytes that are not UTF-8 as U+FFFD."""
    if b"%" not in raw:
        return raw.decode("ascii")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def encode_value(value: str) -> str:
    """``value`` percent-encoded as a baggage value: UTF-8 bytes outside baggage-octet, and
    ``%`` itself, escaped; every other character kept."""
    return "".join(c if c in _UNESCAPED else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in value)


@dataclass(frozen=True, slots=True)
class Member:
    """One valid list-member: its key, its decoded value, and its canonical bytes
    (``key=value`` then its valid properties, without whitespace, the value as it came)."""

    key: str
    value: str
    text: bytes


@dataclass(frozen=True, slots=True)
class Baggage:
    """A parsed baggage-string.

    ``members``: the valid members, in order. ``dropped``: what was not valid, as written (the
    text before the ``=`` of each invalid member, ``;property`` for an invalid property), so a
    log can say what was left out. ``too_large``: over :data:`MAX_BYTES` or :data:`MAX_MEMBERS`,
    and then ``members`` is empty. ``exact``: the header is, byte for byte, what
    :meth:`to_header` would say up to whitespace between members and around ``=``: no member or
    property was dropped, no blank member, no whitespace at either end.
    """

    members: tuple[Member, ...]
    dropped: tuple[bytes, ...] = ()
    too_large: bool = False
    exact: bool = True

    def get(self, key: str) -> str | None:
        """The value of ``key``'s last valid member, or None."""
        for member in reversed(self.members):
            if member.key == key:
                return member.value
        return None

    def to_header(self) -> str:
        """The canonical header for these members (empty when there are none)."""
        return ",".join(member.text.decode("ascii") for member in self.members)


EMPTY = Baggage(())
TOO_LARGE = Baggage((), too_large=True, exact=False)


def _property(raw: bytes) -> bytes | None:
    """A property's canonical bytes, or None if it is not a valid property."""
    key, equals, value = raw.partition(b"=")
    key = key.strip(OWS)
    if not key or key.translate(None, TOKEN_BYTES):
        return None
    if not equals:
        return key
    value = value.strip(OWS)
    if value.translate(None, VALUE_BYTES):
        return None
    return key + b"=" + value


def _member(raw: bytes, dropped: list[bytes]) -> Member | None:
    """One list-member, or None (recorded in ``dropped``) if it is not valid."""
    head, *properties = raw.split(b";")
    key, equals, value = head.partition(b"=")
    key = key.strip(OWS)
    value = value.strip(OWS)
    if not equals or not key or key.translate(None, TOKEN_BYTES) or value.translate(None, VALUE_BYTES):
        dropped.append(raw.partition(b"=")[0].strip(OWS))
        return None
    parts = [key + b"=" + value]
    for prop in properties:
        text = _property(prop)
        if text is None:
            dropped.append(b";" + prop.strip(OWS))
        else:
            parts.append(text)
    return Member(key.decode("ascii"), decode_value(value), b";".join(parts))


def parse(raw: bytes) -> Baggage:
    """Read one baggage-string (several headers: join them with :func:`combine` first)."""
    if not raw:
        return EMPTY
    if len(raw) > MAX_BYTES or (raw.count(b",") >= MAX_MEMBERS and _count_members(raw) > MAX_MEMBERS):
        return TOO_LARGE
    members: list[Member] = []
    dropped: list[bytes] = []
    blank = False
    for piece in raw.split(b","):
        if not piece.strip(OWS):
            blank = True
            continue
        member = _member(piece, dropped)
        if member is not None:
            members.append(member)
    exact = not dropped and not blank and raw[:1] not in OWS and raw[-1:] not in OWS
    return Baggage(tuple(members), tuple(dropped), False, exact)


def _count_members(raw: bytes) -> int:
    # Blank pieces (a trailing comma, ",,") are not members and do not count towards the limit.
    return sum(1 for piece in raw.split(b",") if piece.strip(OWS))


def combine(values: Iterable[bytes | None]) -> bytes | None:
    """Several ``baggage`` header values as one baggage-string (joined by commas, in order);
    None when there is none. A header with no value (Kafka allows null) adds nothing."""
    present = [value for value in values if value]
    if not present:
        return None
    return present[0] if len(present) == 1 else b",".join(present)


def merge(base: Baggage, over: Baggage) -> Baggage:
    """``base``'s members with ``over``'s in their place: every member of a key ``over`` has is
    dropped from ``base``, then ``over``'s members follow (so ``over``'s value of a key wins for
    every reader, whichever duplicate it prefers)."""
    keys = {member.key for member in over.members}
    return Baggage(tuple(m for m in base.members if m.key not in keys) + over.members)


def with_member(baggage: Baggage, key: str, value: str) -> Baggage:
    """``baggage`` with ``key=value`` as its last member (other members of ``key`` removed)."""
    if not is_token(key):
        raise ValueError(f"baggage key {key!r} is not a token (RFC 9110: letters, digits, !#$%&'*+-.^_`|~)")
    text = f"{key}={encode_value(value)}".encode("ascii")
    return merge(baggage, Baggage((Member(key, value, text),)))


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The ``baggage`` header a delivery carries for a record's baggage-string.

    ``header``: the value to send, None for none. ``invalid``: the record's header was not a
    valid baggage header as it stood (counted as bad input). ``note``: why it was not forwarded
    byte for byte, for the log; None when it was.
    """

    header: str | None
    invalid: bool = False
    note: str | None = None


def for_delivery(raw: bytes | None, tenant_key: str) -> Forwarded:
    """What to forward for ``raw`` (all the record's ``baggage`` headers, :func:`combine`\\ d),
    so that a W3C reader of it gets exactly the tenant :func:`parse` reads from ``raw``.

    - A valid header is forwarded byte for byte.
    - Otherwise the canonical header of its valid members (:meth:`Baggage.to_header`): invalid
      members and properties are left out (a reader could not read them anyway, and a strict
      one, such as OpenTelemetry Go's, drops the whole header for one of them), whitespace at
      the ends goes. A header over the limits is not forwarded: it was read as no baggage.
    - The tenant's member is forwarded without properties: OpenTelemetry Python keeps them
      inside the value, so a Python app would carry ``t1;p=x`` on to its next hop as the
      tenant and that hop would route it as another tenant. Other members keep theirs.
    """
    if not raw:
        return Forwarded(None)
    baggage = parse(raw)
    if baggage.too_large:
        return Forwarded(
            None, True,
            f"not forwarded: over the W3C limits ({len(raw)} bytes; at most {MAX_BYTES} bytes and "
            f"{MAX_MEMBERS} members), decided as no baggage",
        )
    tenant_properties = any(m.key == tenant_key and b";" in m.text for m in baggage.members)
    if baggage.exact and not tenant_properties:
        return Forwarded(raw.decode("ascii"))
    notes: list[str] = []
    members = baggage.members
    if tenant_properties:
        members = tuple(_without_properties(m) if m.key == tenant_key else m for m in members)
        notes.append(f"properties of {tenant_key!r} removed")
    if baggage.dropped:
        shown = ", ".join(repr(d[:40].decode("ascii", "replace")) for d in baggage.dropped[:5])
        more = f" and {len(baggage.dropped) - 5} more" if len(baggage.dropped) > 5 else ""
        notes.append(f"invalid members or properties left out: {shown}{more}")
    elif not baggage.exact:
        notes.append("whitespace at the ends or empty members removed")
    header = Baggage(members).to_header()
    return Forwarded(header or None, bool(baggage.dropped), "re-serialized: " + "; ".join(notes))


def _without_properties(member: Member) -> Member:
    return Member(member.key, member.value, member.text.partition(b";")[0])
