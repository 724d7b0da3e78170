"""DNS on the wire (dnspython, imported here only): queries, RFC 2136 updates, TSIG keys.

Every failure leaves this module as one ``CertkeeperError`` line naming the server and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.update

from certkeeper.errors import CertkeeperError, ConfigError

TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")
_KEY_BLOCK = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM = re.compile(r"algorithm\s+\"?([\w.-]+)\"?\s*;")
_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;')


class Refused(CertkeeperError):
    """The server answered and did not make the change (so nothing is left to take out)."""


class KeyRefused(ConfigError):
    """The server refused the TSIG key: nothing signed with it was done."""


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str  # base64, as in BIND's key files

    def __repr__(self) -> str:  # never print the secret
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r})"

    @classmethod
    def from_file(cls, path: str) -> TsigKey:
        """The key from a file in BIND's syntax (what ``tsig-keygen`` and ``ddns-confgen`` write)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read the TSIG key file {path} ({error.strerror})") from None
        block = _KEY_BLOCK.search(text)
        algorithm = _ALGORITHM.search(block.group(2)) if block else None
        secret = _SECRET.search(block.group(2)) if block else None
        if block is None or algorithm is None or secret is None:
            raise ConfigError(
                f"{path} is not a TSIG key file",
                'expected BIND\'s syntax: key "NAME" { algorithm hmac-sha256; secret "BASE64"; }; (tsig-keygen NAME)',
            )
        key = cls(block.group(1), algorithm.group(1).lower(), secret.group(1))
        if key.algorithm not in TSIG_ALGORITHMS:
            raise ConfigError(f"{path}: TSIG algorithm {key.algorithm!r} is not supported", "use hmac-sha256")
        try:
            key.wire()
        except Exception:
            raise ConfigError(f"{path}: the TSIG secret is not valid base64", "make the key with tsig-keygen") from None
        return key

    def wire(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, self.algorithm)


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or HOST, as given to ``--dns-server``."""
    value = text.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?|([0-9a-fA-F:]+)", value)
    if not match:
        raise ConfigError(f"DNS server {text!r} is not HOST:PORT", "e.g. --dns-server 192.0.2.53:53")
    host = match.group(1) or match.group(3) or match.group(5)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigError(f"DNS server {text!r} has an invalid port", "use a port from 1 to 65535")
    return host, port


def _address(host: str, timeout: float) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    addresses = system_lookup(host, "A", timeout) or system_lookup(host, "AAAA", timeout)
    if not addresses:
        raise ConfigError(f"cannot resolve the DNS server name {host!r}", "give its address or a resolvable name")
    return addresses[0]


def system_lookup(name: str, rdtype: str, timeout: float) -> list[str]:
    """Values from the machine's resolver; empty when the name has none (or the resolver fails)."""
    try:
        answer = dns.resolver.resolve(name, rdtype, lifetime=timeout, search=False)
    except (dns.exception.DNSException, OSError):
        return []
    return [rdata.to_text() for rdata in answer]


class Server:
    """One DNS server: signed queries and RFC 2136 updates to it (the primary), plain queries to others."""

    def __init__(self, host: str, port: int, key: TsigKey | None, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.timeout = timeout
        self.address = _address(host, timeout)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def _exchange(
        self, message: dns.message.Message, address: str, *, tcp: bool, what: str, timeout: float | None = None
    ) -> dns.message.Message:
        where = f"{address}:{self.port}"
        timeout = self.timeout if timeout is None else timeout
        try:
            if tcp:
                return dns.query.tcp(message, address, port=self.port, timeout=timeout)
            response, _ = dns.query.udp_with_fallback(message, address, port=self.port, timeout=timeout)
            return response
        except dns.tsig.PeerBadKey:
            raise self._key_error("BADKEY: the server has no key by that name") from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise self._key_error("BADSIG: the secret or algorithm differs from the server's") from None
        except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
            raise CertkeeperError(
                f"DNS server {where} refused the TSIG signature's time (BADTIME)",
                "the clocks of this machine and the server differ; fix the time",
            ) from None
        except dns.exception.Timeout:
            raise CertkeeperError(
                f"DNS server {where} did not answer {what} within {timeout:g} s",
                "check the address, the port and the firewall",
            ) from None
        except (OSError, EOFError, dns.exception.DNSException) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise CertkeeperError(
                f"DNS server {where} did not answer {what} ({reason})", "check the address, the port and the firewall"
            ) from None

    def _key_error(self, why: str) -> KeyRefused:
        name = self.key.name if self.key else "?"
        return KeyRefused(
            f"DNS server {self} refused the TSIG key {name!r} ({why})",
            "give --tsig-key-file the key configured on the server (same name, algorithm and secret)",
        )

    def _signed(self, message: dns.message.Message) -> dns.message.Message:
        if self.key is not None:
            message.use_tsig(self.key.wire())
        return message

    def _check_rcode(self, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode == dns.rcode.NOTAUTH and self.key is not None:
            raise self._key_error("NOTAUTH")
        raise Refused(
            f"DNS server {self} answered {text} to {what}",
            "check that the server is primary for the zone and that its update-policy lets the key change TXT records",
        )

    # -- queries to the primary -------------------------------------------------------------------

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        return self._exchange(self._signed(dns.message.make_query(name, rdtype)), self.address, tcp=False,
                              what=f"a {rdtype} query for {name}")  # fmt: skip

    def zone_of(self, fqdn: str) -> str | None:
        """The zone this server is authoritative for that holds ``fqdn``, or None when it serves none."""
        response = self.query(fqdn, "SOA")
        if not response.flags & dns.flags.AA:
            return None
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name.to_text(omit_final_dot=True))
        return None

    def cname(self, fqdn: str) -> tuple[bool, str | None]:
        """(authoritative, CNAME target) for ``fqdn`` as this server knows it."""
        response = self.query(fqdn, "CNAME")
        authoritative = bool(response.flags & dns.flags.AA)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == dns.name.from_text(fqdn):
                return authoritative, str(rrset[0].target.to_text(omit_final_dot=True))
        return authoritative, None

    def answers(self, name: str, rdtype: str) -> list[str]:
        response = self.query(name, rdtype)
        if not response.flags & dns.flags.AA:
            return []
        return [rdata.to_text() for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for rdata in rrset]  # fmt: skip

    # -- RFC 2136 --------------------------------------------------------------------------------

    def _update(self, zone: str, fill: str, name: str, value: str, ttl: int) -> None:
        update = dns.update.UpdateMessage(zone)
        if fill == "add":
            update.add(dns.name.from_text(name), ttl, "TXT", f'"{value}"')
        else:
            update.delete(dns.name.from_text(name), "TXT", f'"{value}"')
        response = self._exchange(self._signed(update), self.address, tcp=True, what=f"an update of {zone}")
        self._check_rcode(response, f"the update of TXT {name} in zone {zone}")

    def add_txt(self, zone: str, name: str, value: str, ttl: int = 60) -> None:
        """Add one TXT value to ``name``; other values under the same name stay."""
        self._update(zone, "add", name, value, ttl)

    def delete_txt(self, zone: str, name: str, value: str) -> None:
        """Remove exactly this TXT value from ``name`` (RFC 2136 §2.5.4); a missing one is no error."""
        self._update(zone, "delete", name, value, 0)

    # -- what another server serves (propagation) ------------------------------------------------

    def txt_at(self, address: str, name: str, timeout: float | None = None) -> set[str] | None:
        """TXT values ``address`` serves authoritatively for ``name``; None if it does not answer."""
        query = dns.message.make_query(name, "TXT")
        query.flags &= ~dns.flags.RD
        try:
            response = self._exchange(query, address, tcp=False, what=f"a TXT query for {name}", timeout=timeout)
        except CertkeeperError:
            return None
        values: set[str] = set()
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                values.update(b"".join(rdata.strings).decode("ascii", "replace") for rdata in rrset)
        return values
