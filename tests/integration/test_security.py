"""Nothing personal leaves the worker unasked: bound address, guarded routes, masked logs/CLI.

One worker runs at DEBUG, forwarding to the emulator, over users whose addresses are valid but
unusual (non-ASCII local part and domain, quoted local part, IP literal, plus tag, upper case),
with names and attribute values that are easy to spot, plus one malformed batch that is
dead-lettered with such an address inside. Then:

- its listening sockets (psutil) are on 127.0.0.1 only, at the configured port;
- every route its web server serves (read from the running worker: it logs its aiohttp
  router once listening) is requested with no token, a wrong token and the right one: open
  routes answer everyone, guarded ones only the token; no answer holds a raw personal value;
- every line of its DEBUG log, and what ``mpcio deadletter list/show`` and ``mpcio
  check-config`` print, holds none of the addresses in any rendering (plain, lower case, JSON,
  ASCII-escaped JSON, Python and bytes repr), nor a secret or URL credential.

The counts are printed (``-s``) for the closing note.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

import aiohttp
import orjson
import psutil
import pytest

from app.masking import Masker
from tests.integration.cli import mpcio
from tests.integration.support import consume_until, poll, produce, wait_for, worker_env

if TYPE_CHECKING:
    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Deployment, Names
    from tests.integration.support import WorkerProcess

pytestmark = pytest.mark.integration

TOKEN = "support-token-0123456789abcdef"
MASK_KEY = "mask-key-for-the-security-test-0123456789"
URL_PASSWORD = "url-s3cr3t-pw"
T0 = 1_764_400_000_000
USERS = {
    20_001: "Müller.Jörg@bücher.example",
    20_002: '"john doe"@example.com',
    20_003: "user@[192.0.2.1]",
    20_004: "Ada.Lovelace+newsletter@Example.COM",
    20_005: "ZOË.ÅNGSTRÖM@EXAMPLE.ORG",
}
DEAD_MPID, DEAD_EMAIL = 20_009, "Dëad.Lëtter+tag@Ünusual.example"
NAMES = {mpid: (f"Firstname{mpid}x", f"Lastname{mpid}y") for mpid in USERS}
ATTRIBUTE_VALUE = "attr-value-{mpid}-zz"
CUSTOMER_ID = "customer-{mpid}-id"
SECRET_LABELS = ("token", "mask key", "URL password")
ROUTES_LINE = re.compile(r"web server listening on (?P<addr>\S+); routes: (?P<routes>\[.*\])")


def batch(mpid: int, email: str) -> bytes:
    first, last = NAMES[mpid]
    return orjson.dumps(
        {
            "mpid": mpid,
            "environment": "production",
            "timestamp_unixtime_ms": T0,
            "user_identities": {"email": email, "customer_id": CUSTOMER_ID.format(mpid=mpid)},
            "user_attributes": {
                "$FirstName": first,
                "$LastName": last,
                "favourite": ATTRIBUTE_VALUE.format(mpid=mpid),
            },
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": "Viewed",
                        "timestamp_unixtime_ms": T0 + 1,
                        "source_message_id": f"m-{mpid}",
                        "custom_attributes": {"contact": email},
                    },
                }
            ],
        }
    )


def renderings(value: str) -> set[str]:
    """Every form a value can take in a log line or printed JSON."""
    dumped = orjson.dumps(value).decode()[1:-1]
    ascii_json = "".join(
        ch if ord(ch) < 128 else f"\\u{ord(ch):04x}" for ch in dumped
    )  # as json.dumps writes it
    return {
        value,
        value.lower(),
        dumped,
        ascii_json,
        repr(value)[1:-1],
        repr(value.encode())[2:-1],
    }


def raw_values() -> dict[str, str]:
    """Each personal value of the test data (and each secret), by a label for the report."""
    values = {f"email {mpid}": email for mpid, email in USERS.items()}
    values["dead-lettered email"] = DEAD_EMAIL
    for mpid in USERS:
        values[f"first name {mpid}"], values[f"last name {mpid}"] = NAMES[mpid]
        values[f"attribute {mpid}"] = ATTRIBUTE_VALUE.format(mpid=mpid)
        values[f"customer id {mpid}"] = CUSTOMER_ID.format(mpid=mpid)
    values |= dict(zip(SECRET_LABELS, (TOKEN, MASK_KEY, URL_PASSWORD), strict=True))
    return values


def findings_in(text: str, where: str, values: dict[str, str]) -> list[str]:
    return [
        f"{where}: {label} as {form!r}"
        for label, value in values.items()
        for form in renderings(value)
        if form in text
    ]


def announced_routes(worker: WorkerProcess) -> tuple[str, list[dict[str, str]]]:
    match = ROUTES_LINE.search(worker.output())
    assert match is not None
    return match["addr"], orjson.loads(match["routes"])


async def test_worker_exposes_nothing_personal_unasked(deployment: Deployment) -> None:
    assert "MPCIO_WEB_HOST" not in deployment.env  # the default address is what is checked
    worker = deployment.start_worker(log_level="DEBUG", support_token=TOKEN, mask_key=MASK_KEY)
    settings = deployment.settings
    port = settings.web_port
    base = f"http://127.0.0.1:{port}"
    masker = Masker(MASK_KEY)
    records = [(str(mpid).encode(), batch(mpid, email)) for mpid, email in USERS.items()]
    malformed = orjson.loads(batch(20_001, DEAD_EMAIL))
    malformed["mpid"], malformed["events"] = DEAD_MPID, {"not": "a list"}
    records.append((str(DEAD_MPID).encode(), orjson.dumps(malformed)))
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, records)

    # --- every user is in the table (the view answers 200 with the token) -------------------
    async with aiohttp.ClientSession() as http:

        async def held() -> bool:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for mpid in USERS:
                try:
                    async with http.get(f"{base}/users/{mpid}", headers=headers) as answer:
                        if answer.status != 200:
                            return False
                except aiohttp.ClientError:
                    return False
            return True

        await poll(held, 120, "every test user in the users table", worker)
        await consume_until(
            deployment.kafka.bootstrap,
            deployment.topics.deadletter.name,
            lambda found: len(found) >= 1,
            timeout=60,
            workers=[worker],
        )

        # --- the bound address ----------------------------------------------------------------
        assert worker.process is not None
        listening = [
            conn.laddr
            for conn in psutil.Process(worker.process.pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening, "the worker listens on no socket"
        assert {(addr.ip, addr.port) for addr in listening} == {("127.0.0.1", port)}
        await wait_for(lambda: ROUTES_LINE.search(worker.output()) is not None, 30, "routes")
        address, routes = announced_routes(worker)
        assert address == f"127.0.0.1:{port}"

        # --- every route by every role ---------------------------------------------------------
        values = raw_values()
        roles = {
            "anonymous": {},
            "wrong token": {"Authorization": "Bearer not-the-token-0123456789"},
            "token": {"Authorization": f"Bearer {TOKEN}"},
        }
        paths = {route["path"] for route in routes}
        assert {"/metrics", "/health/live", "/health/ready", "/users/{mpid}"} <= paths
        # faust's views that show partitions or records are not served at all by default
        assert not [p for p in paths if p.startswith(("/router", "/table", "/graph", "/assign"))]
        for path in ("/table/", "/table/users/20001/", "/router/", "/assignment/"):
            async with http.get(base + path, headers=roles["token"]) as answer:
                assert answer.status == 404, path
        route_findings: list[str] = []
        checked = 0
        for route, (role, headers) in itertools.product(routes, roles.items()):
            for path in _concrete(route["path"]):
                async with http.request(route["method"], base + path, headers=headers) as answer:
                    body = await answer.text()
                    shown = body + "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
                checked += 1
                route_findings += findings_in(shown, f"{route['method']} {path} as {role}", values)
                if route["access"] == "open":
                    assert answer.status in {200, 503}, (path, role, answer.status)
                elif role == "token":
                    assert answer.status in {200, 400, 404}, (path, role, answer.status)
                else:
                    assert answer.status == 401, (path, role, answer.status)
        # the token shows the user, masked with the deployment's key
        async with http.get(f"{base}/users/20001", headers=roles["token"]) as answer:
            view = await answer.json()
        assert view["email"] == masker.email(USERS[20_001])
        assert view["first_name"] == masker.value(NAMES[20_001][0])
        print(
            f"\nroute scan: {len(routes)} routes ({len(paths)} paths) x {len(roles)} roles = "
            f"{checked} requests checked, {len(route_findings)} findings"
        )
        assert not route_findings, "\n".join(route_findings[:20])

    # --- the CLI: dead letters and check-config --------------------------------------------
    env = {
        **deployment.env,
        "MPCIO_MASK_KEY": MASK_KEY,
        "MPCIO_SUPPORT_TOKEN": TOKEN,
    }
    listed = await mpcio("deadletter", "list", env=env)
    assert listed.code == 0, listed.both
    positions = [line.split()[0] for line in listed.out.splitlines() if "@" in line.split()[0]]
    assert positions
    outputs = {"deadletter list": listed.both}
    for position in positions:
        shown = await mpcio("deadletter", "show", position, env=env)
        assert shown.code == 0, shown.both
        outputs[f"deadletter show {position}"] = shown.both
    assert any(masker.email(DEAD_EMAIL) in text for text in outputs.values())
    host = settings.customerio_base_url.removeprefix("http://")
    with_credentials = {**env, "MPCIO_CUSTOMERIO_URL": f"http://admin:{URL_PASSWORD}@{host}"}
    checked_config = await mpcio("check-config", env=with_credentials)
    # credentials in the URL are refused (the Track API's own settings authenticate), and the
    # one line saying so shows the URL with its password masked
    assert checked_config.code == 2, checked_config.both
    assert "http://**********@" in checked_config.err
    outputs["check-config"] = checked_config.both
    # the dead-letter tools mask addresses and secrets; a payload's other values are shown
    cli_values = {k: v for k, v in values.items() if "email" in k or k in SECRET_LABELS}
    cli_findings = [
        f for name, text in outputs.items() for f in findings_in(text, name, cli_values)
    ]

    # --- the DEBUG log ---------------------------------------------------------------------
    await worker.stop()
    lines = worker.output().splitlines()
    assert sum(" DEBUG " in line for line in lines) > 100  # really at DEBUG
    log_findings = [
        f for n, line in enumerate(lines) for f in findings_in(line, f"line {n}", values)
    ]
    print(
        f"log scan: {len(lines)} worker log lines (DEBUG) scanned for {len(values)} values "
        f"(6 addresses, names, attributes, customer ids, secrets) in "
        f"{sum(len(renderings(v)) for v in values.values())} forms: {len(log_findings)} findings"
        f"\nCLI scan: {len(outputs)} outputs (deadletter list, show, check-config; "
        f"{sum(len(t.splitlines()) for t in outputs.values())} lines) scanned for "
        f"{len(cli_values)} addresses and secrets: {len(cli_findings)} findings"
    )
    assert not log_findings + cli_findings, "\n".join((log_findings + cli_findings)[:40])


def _concrete(pattern: str) -> list[str]:
    """The paths requested for a route pattern: each test user for ``{mpid}``, an unknown
    user and a bad one; other parameters get a plausible value."""
    if "{mpid}" in pattern:
        mpids = [*map(str, USERS), "999999", "not-a-number"]
        return [pattern.replace("{mpid}", mpid) for mpid in mpids]
    return [re.sub(r"\{[^}]+\}", "users", pattern)]


async def test_check_config_generates_a_mask_key_when_none_is_set(
    kafka: LocalKafka, names: Names
) -> None:
    env = worker_env(kafka.url, names.prefix, 0)
    keys = []
    for _ in range(2):
        result = await mpcio("check-config", env=env)
        assert "MPCIO_MASK_KEY is not set" in result.out, result.both
        keys += re.findall(r"^  MPCIO_MASK_KEY=(\S+)$", result.out, re.MULTILINE)
    assert len(keys) == 2
    assert keys[0] != keys[1]  # generated, not derived from anything
    assert all(len(key) >= 40 for key in keys)
    with_key = await mpcio("check-config", env={**env, "MPCIO_MASK_KEY": keys[0]})
    assert "MPCIO_MASK_KEY" not in with_key.out
    assert keys[0] not in with_key.both  # a set key is a secret like the others
    assert re.search(r"^mask_key +\*{10}$", with_key.out, re.MULTILINE), with_key.out


async def test_without_a_token_every_guarded_route_is_off_even_faust_views_enabled(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker(web_faust_views="true", mask_key=MASK_KEY)
    base = f"http://127.0.0.1:{deployment.settings.web_port}"
    await produce(
        deployment.kafka.bootstrap,
        deployment.topics.batches.name,
        [(b"20001", batch(20_001, USERS[20_001]))],
    )
    await wait_for(lambda: ROUTES_LINE.search(worker.output()) is not None, 120, "routes")
    _, routes = announced_routes(worker)
    paths = {route["path"] for route in routes}
    assert any(path.startswith("/table") for path in paths)  # faust's views are served...
    assert any(path.startswith("/router") for path in paths)
    statuses = {}
    async with aiohttp.ClientSession() as http:
        for route in routes:
            path = route["path"].replace("{mpid}", "20001").replace("{key}", "20001")
            path = re.sub(r"\{[^}]+\}", "users", path)  # /table/{name}: the users table
            headers = {"Authorization": "Bearer any-token-at-all-0123456789"}
            async with http.request(route["method"], base + path, headers=headers) as answer:
                statuses[route["method"], path] = (route["access"], answer.status)
    # ...but with no MPCIO_SUPPORT_TOKEN every route but /metrics and /health/* is off
    assert {access for access, _ in statuses.values()} == {"open", "off"}
    for (method, path), (access, status) in statuses.items():
        expected = {200, 503} if access == "open" else {404}
        assert status in expected, (method, path, access, status)
    print(f"\nno token, faust views on: {len(statuses)} routes, guarded ones all 404")
