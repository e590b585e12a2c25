"""Label Studio's SSRF settings that let it reach the backend's private address, and nothing else private.

Label Studio (1.23.2) refuses to connect an ML backend or send a webhook to a private or reserved address (with
``ML_BLOCK_LOCAL_IP`` and ``SSRF_PROTECTION_ENABLED``, both on by default), and a backend in a container or on an
office network has such an address. Rather than turning the protection off for every URL, replace the list of
refused networks by the same list with the backend's addresses taken out:

    python3 docker/label_studio_ssrf.py 172.31.250.10      # prints the two settings for Label Studio's environment

docker/docker-compose.yml carries this output for the backend's fixed address; tests/test_docker_files.py checks
that it does and that the list below is Label Studio's own.
"""

from __future__ import annotations

import ipaddress
import sys

LABEL_STUDIO_DEFAULT_BANNED_SUBNETS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "233.252.0.0/24", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "::ffff:0:0/96",
    "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:0000::/32", "2001:20::/28",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
)
"""``default_banned_subnets`` of ``validate_ip`` in label_studio/core/utils/io.py (1.23.2), in its order."""


def banned_subnets(allowed: list[str]) -> list[str]:
    """Label Studio's default refused networks with the ``allowed`` addresses cut out (smallest covering pieces)."""
    nets = [ipaddress.ip_network(n) for n in LABEL_STUDIO_DEFAULT_BANNED_SUBNETS]
    for address in (ipaddress.ip_network(a) for a in allowed):
        pieces = []
        for net in nets:
            if net.version == address.version and address.subnet_of(net):
                pieces.extend(sorted(net.address_exclude(address)))
            else:
                pieces.append(net)
        nets = pieces
    return [str(n) for n in nets]


def settings(allowed: list[str]) -> dict[str, str]:
    """Label Studio's environment: protection on, default list off, the cut list as the only refused networks."""
    return {"LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "true", "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "true",
            "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
            "LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_subnets(allowed))}


def main(argv: list[str]) -> int:
    """Print the settings as ``NAME=value`` lines (for an env file) for the addresses given as arguments."""
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for name, value in settings(argv).items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
