"""Pieces of the http executor that need no server: input checks, the address guard,
Retry-After parsing and body kinds."""

from __future__ import annotations

import email.utils
import ipaddress
import time

import pytest
from pydantic import ValidationError

from workplex.executors.http import (
    AddressGuard,
    GuardRefused,
    HttpConfig,
    HttpInput,
    _body_kind,
    parse_retry_after,
)


def test_input_normalises_and_checks() -> None:
    model = HttpInput.model_validate({"method": "post", "url": "https://example.test/x", "json": None})
    assert model.method == "POST"
    assert "json_body" in model.model_fields_set
    with pytest.raises(ValidationError, match="url"):
        HttpInput.model_validate({"url": "ftp://example.test/"})
    with pytest.raises(ValidationError, match="method"):
        HttpInput.model_validate({"url": "http://a.test/", "method": "GET X"})
    with pytest.raises(ValidationError, match="json, form"):
        HttpInput.model_validate({"url": "http://a.test/", "json": {}, "form": {"a": "b"}})
    with pytest.raises(ValidationError, match="timeout"):
        HttpInput.model_validate({"url": "http://a.test/", "timeout": 0})


def test_config_rejects_a_bad_allow_entry() -> None:
    with pytest.raises(ValidationError, match="neither a CIDR"):
        HttpConfig.model_validate({"allow_private_networks": ["10.0.0.0/33"]})
    assert HttpConfig.model_validate({"allow_private_networks": ["10.0.0.0/8", "db.local"]})


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
     "224.0.0.1", "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::"],
)
def test_guard_refuses_non_public_addresses(address: str) -> None:
    assert not AddressGuard(False).permitted(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_guard_permits_public_addresses(address: str) -> None:
    assert AddressGuard(False).permitted(ipaddress.ip_address(address))


def test_guard_allow_list() -> None:
    guard = AddressGuard(["10.0.0.0/8", "::1", "Internal.Example"])
    assert guard.permitted(ipaddress.ip_address("10.9.9.9"))
    assert guard.permitted(ipaddress.ip_address("::1"))
    assert not guard.permitted(ipaddress.ip_address("192.168.0.1"))
    assert "internal.example" in guard.hosts


async def test_guard_resolve_literals_and_allowed_hosts() -> None:
    guard = AddressGuard(["internal.example"])
    assert await guard.resolve("internal.example", 80) is None
    assert await guard.resolve("8.8.8.8", 80) == ["8.8.8.8"]
    with pytest.raises(GuardRefused, match=r"169\.254\.169\.254"):
        await guard.resolve("169.254.169.254", 80)
    with pytest.raises(GuardRefused, match="resolves to"):
        await guard.resolve("localhost", 80)


def test_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(email.utils.formatdate(time.time() + 60, usegmt=True))
    assert later is not None and 50 < later <= 61
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", "json"),
        ("application/problem+json; charset=utf-8", "json"),
        ("text/html; charset=latin-1", "text"),
        ("application/xml", "text"),
        ("", "text"),
        ("image/png", "base64"),
        ("application/octet-stream", "base64"),
    ],
)
def test_body_kind(content_type: str, kind: str) -> None:
    assert _body_kind(content_type) == kind
