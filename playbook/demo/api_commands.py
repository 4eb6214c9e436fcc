"""`playbook demo-api`: the demo company's business system as a REST API, in the foreground."""

from __future__ import annotations

import argparse


def cmd_demo_api(args: argparse.Namespace) -> int:
    from datetime import date

    from playbook.demo.api_server import FAULTS, BusinessApi
    from playbook.demo.company import build_company
    from playbook.errors import PlaybookError

    faults = {}
    for name in args.fault or ():
        if name not in FAULTS:
            raise PlaybookError(f"unknown fault {name!r}; choose one of {', '.join(FAULTS)}")
        faults[name] = None
    if args.connect:
        from playbook.demo.business_system import serve_business_system
        from playbook.demo.company import INVOICES_SOURCE
        from playbook.targets import resolve_target

        resolve_target(args.target)
        api = serve_business_system(args.config, years=args.years, clients=args.clients, seed=args.seed,
                                    end=date.fromisoformat(args.end))
        print(f"demo accounting system at {api.url} (GET /v2/Invoices, POST /oauth/token); its client and refresh "
              f"token are in the secret of source {INVOICES_SOURCE}. Ctrl-C to stop", flush=True)
        try:
            api.join()
        except KeyboardInterrupt:
            pass
        finally:
            api.stop()
        return 0
    company = build_company(args.seed, date.fromisoformat(args.end), args.years, args.clients)
    api = BusinessApi(company, token=args.token, port=args.port, faults=faults, quiet=False)
    print(f"business API for {len(company.sales)} order lines and {len(company.costs)} costs at {api.url}")
    month = company.end.replace(day=1).isoformat()
    print(f"  GET {api.url}/v1/orders?updated_since={month}&paging=page&page=1&page_size=100")
    print(f"  GET {api.url}/v1/costs?from={month}&paging=cursor")
    print(f"  token: {api.token} (Authorization: Bearer, X-API-Key, ?api_key= or Basic user 'playbook')")
    if faults:
        print(f"  faults: {', '.join(faults)}")
    print("Ctrl-C to stop")
    try:
        api.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        api.close()
    return 0


def register_commands(subparsers) -> None:
    from playbook.demo.api_server import FAULTS

    p = subparsers.add_parser("demo-api", help="serve the demo company's business system as a REST API")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: a free port)")
    p.add_argument("--fault", action="append", choices=sorted(FAULTS),
                   help="switch a fault on (repeatable): " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    p.add_argument("--token", help="the API token (default: a random one, printed)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the demo company (default 7)")
    p.add_argument("--end", default="2026-11-30", help="last day of the history (default 2026-11-30)")
    p.add_argument("--years", type=int, default=3, help="years of history (default 3)")
    p.add_argument("--clients", type=int, default=300, help="number of clients (default 300)")
    p.add_argument("--connect", action="store_true",
                   help="serve the trade accounts' invoices where the configuration's trade_invoices source reads "
                        "them, and store its OAuth client and a new refresh token in that source's secret")
    p.add_argument("--config", help="configuration file for --connect (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--target", choices=("local", "aws"), default="local",
                   help="whose Secrets Manager --connect stores the credential in (default local)")
    p.set_defaults(func=cmd_demo_api)
