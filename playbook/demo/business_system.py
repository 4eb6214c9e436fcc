"""The demo company's accounting system, served while the playbook reads it and connected the way a consultant
connects a real one: its OAuth client and a fresh refresh token stored in the API source's secret.

The server answers where the configuration's `trade_invoices` source looks for it (`api.base_url`, a loopback
address), serves the trade accounts' invoices of the same demo company the files come from, and announces a daily
call limit in its response headers, as accounting systems do. From the moment the secret holds the refresh token,
the functions rotate it themselves; a server started again is connected again (a new consent, a new token).
"""

from __future__ import annotations

import errno
from datetime import date
from urllib.parse import urlsplit

from playbook.demo.api_server import CLIENT_ID, BusinessApi
from playbook.demo.company import DEFAULT_END, DEFAULT_SEED, INVOICES_SOURCE, build_company
from playbook.errors import PlaybookError
from playbook.settings import names_this_machine

DAILY_CALL_LIMIT = 5_000  # calls a day, as Xero allows an app per organisation


def serve_business_system(config=None, *, years: int = 3, clients: int = 300, seed: int = DEFAULT_SEED,
                          end: date = DEFAULT_END, source: str = INVOICES_SOURCE) -> BusinessApi:
    """Start the demo accounting system on the source's base URL and store its credential in the source's secret
    (the target's Secrets Manager, as boto3 is pointed); the running server (stop it with .stop())."""
    from playbook.config import load_config
    from playbook.secret import secret_name, store_secret

    company_config = config if hasattr(config, "sources") else load_config(config)
    secret, _ = secret_name(company_config, source)
    api_options = company_config.sources[source].api
    url = urlsplit(api_options.base_url)
    if not names_this_machine(url.hostname):
        raise PlaybookError(f"sources.{source}.api.base_url is {api_options.base_url}: the demo accounting system "
                            "serves on this machine only (http://127.0.0.1:PORT)")
    company = build_company(seed, end, years, clients)
    try:
        api = BusinessApi(company, host=url.hostname, port=url.port or 80, invoices=company.invoice_lines)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PlaybookError(f"port {url.port} of sources.{source}.api.base_url is in use: another demo accounting "
                            "system (`playbook demo-api`, another run) is serving there; stop it, or give the "
                            "source another port") from None
    api.rate_limit = (DAILY_CALL_LIMIT, 86_400.0)
    store_secret(secret, {"client_id": CLIENT_ID, "client_secret": api.token, "refresh_token": api.refresh_token})
    return api.start()
