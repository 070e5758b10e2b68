"""``python -m fedgin.fl.flower certs|app|check``: the deployment helpers of docs/deployment.md."""
from __future__ import annotations

import argparse
import sys

from fedgin.config import load_config
from fedgin.fl.flower.certs import write_node_keys, write_server_certificates
from fedgin.fl.flower.project import write_project
from fedgin.fl.flower.reach import check_superlink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedgin.fl.flower", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="a CA, the SuperLink's TLS certificate and each site's key pair")
    certs.add_argument("--out", required=True, help="folder for the files")
    certs.add_argument("--host", action="append", required=True,
                       help="a name or IP address the SuperLink is reached at (repeatable)")
    certs.add_argument("--site", action="append", default=[], help="a site to make a key pair for (repeatable)")
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates")
    app = sub.add_parser("app", help="the Flower app project (pyproject.toml) that `flwr run` submits")
    app.add_argument("config", help="the fedgin YAML config of the run")
    app.add_argument("--out", required=True, help="the run directory, on the SuperLink's machine")
    app.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    app.add_argument("app_dir", help="folder to write pyproject.toml into")
    check = sub.add_parser("check", help="can this machine reach the SuperLink (TCP, and TLS with the CA file)?")
    check.add_argument("--superlink", required=True, help="the SuperLink's Fleet API address, host:port")
    check.add_argument("--root-certificates", help="the deployment's CA file (omit only in insecure mode)")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    try:
        if args.command == "certs":
            written = write_server_certificates(args.out, args.host, args.days)
            print(f"CA {written.ca}, SuperLink certificate {written.cert} and key {written.key}")
            for site in args.site:
                keys = write_node_keys(args.out, site)
                print(f"site {site}: private key {keys.private} (to the site), public key {keys.public} (register)")
        elif args.command == "check":
            print(check_superlink(args.superlink, args.root_certificates, args.timeout))
        else:
            path = write_project(args.app_dir, load_config(args.config, overrides=["engine=flower"]), args.out,
                                 args.resume)
            print(f"wrote {path}; submit with: flwr run {args.app_dir} <superlink connection> --stream")
    except (ValueError, OSError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
