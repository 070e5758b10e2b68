"""Can this machine reach the SuperLink? The check a site runs before starting ``flower-supernode`` (which
otherwise retries silently), and the coordinator before ``flwr run``: one line naming the address and the
problem (name, port, firewall, TLS)."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"SuperLink address {address!r}: expected host:port, e.g. superlink.example.org:9092")
    return host.strip("[]"), int(port)


def check_superlink(address: str, root_certificates: str | Path | None = None, timeout: float = 5.0) -> str:
    """Open a connection to the SuperLink at ``address`` as a SuperNode will: TCP, then (with
    ``root_certificates``, the CA file of the deployment) a TLS handshake that verifies its certificate.
    Returns what was checked; raises ``ConnectionError`` naming the address and the problem."""
    host, port = split_address(address)

    def fail(problem: str) -> ConnectionError:
        return ConnectionError(f"SuperLink {address} is unreachable: {problem}")

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise fail(f"the name {host!r} does not resolve; check the address") from None
    except ConnectionRefusedError:
        raise fail(f"nothing listens on port {port} of {host}; is flower-superlink running there, with this "
                   "Fleet API port?") from None
    except TimeoutError:
        raise fail(f"no answer within {timeout:g} s; a firewall between the site and the SuperLink, or the "
                   "wrong host") from None
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    with sock:
        if root_certificates is None:
            return f"SuperLink {address}: port open (TCP only: no certificate given, as in insecure mode)"
        ca = Path(root_certificates)
        if not ca.is_file():
            raise FileNotFoundError(f"root certificates {ca} do not exist")
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])  # gRPC
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as err:
            raise fail(f"its TLS certificate does not verify against {ca} ({err.verify_message}); use the "
                       "deployment's CA file, and a certificate made for this host name") from None
        except (ssl.SSLError, OSError) as err:
            raise fail(f"the TLS handshake failed ({getattr(err, 'reason', None) or err}); does the SuperLink "
                       "run with TLS (--ssl-certfile), not --insecure?") from None
    return f"SuperLink {address}: reachable, TLS certificate verified against {ca}"
