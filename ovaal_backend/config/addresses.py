"""Addresses in the server's settings: which hosts are this machine, and the comma-separated lists of host names,
image hosts and project ids (each parsed into a set, or a ConfigError naming the setting)."""

from __future__ import annotations

import ipaddress
import re

from .part import ConfigError

MAX_PROJECT_ID = 2**31 - 1
"""The largest Label Studio project id the backend accepts (Label Studio's ids are 32-bit signed integers)."""


def is_loopback_host(host: str) -> bool:
    """Whether a bind address reaches this machine only: 127.0.0.0/8, ::1 or ``localhost``."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name, "" or "0.0.0.0"-like wildcards: assume reachable from outside


_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]{2,45}\])"
"""A DNS name, an IPv4 address or a bracketed IPv6 address."""


def parse_image_hosts(text: str) -> frozenset[str]:
    """Comma-separated ``host[:port]`` entries as a set; ConfigError naming ALLOWED_IMAGE_HOSTS otherwise."""
    entries = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(rf"({_HOST})(?::([0-9]{{1,5}}))?", part)
        if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
            raise ConfigError(f"allowed_image_hosts={text!r}: give host or host:port entries (e.g. "
                              "images.example.com,10.0.0.5:9000) separated by commas, or leave it empty")
        entries.add(part)
    return frozenset(entries)


def parse_host_names(text: str) -> frozenset[str]:
    """Comma-separated host names as a set; ConfigError naming ALLOWED_HOST_NAMES otherwise."""
    names = {p.strip().lower() for p in text.split(",") if p.strip()}
    for name in names:
        if not re.fullmatch(_HOST, name):
            raise ConfigError(f"allowed_host_names={text!r}: give host names (no port, no scheme) separated by "
                              "commas, or leave it empty")
    return frozenset(names)


def parse_project_ids(text: str) -> frozenset[int]:
    """Comma-separated project ids as a set; ConfigError naming ALLOWED_PROJECTS for anything else."""
    ids = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not re.fullmatch(r"[0-9]{1,10}", part) or not 0 < int(part) <= MAX_PROJECT_ID:
            raise ConfigError(f"allowed_projects={text!r}: give Label Studio project ids (integers "
                              f"1..{MAX_PROJECT_ID}) separated by commas, or leave it empty for every project")
        ids.add(int(part))
    return frozenset(ids)
