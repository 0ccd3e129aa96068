"""Dashboard security: login on a non-loopback bind, sessions, CSRF, rate limiting, Host checks."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from gateway.web import WebSettings, create_app
from gateway.web.auth import LoginLimiter, SessionSigner, hash_password, set_password, verify_password
from gateway.web.cli import set_password_command
from gateway.web.settings import is_loopback
from tests.support.web import LOCAL_BASE, MemoryPort, csrf_headers, prime

EXPOSED_BASE = "http://192.168.1.20:8080"
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.01)
    p.add_device("gate")
    p.add_event("gate", "delivery", event_id="aaaaaaaaaaaa")
    p.add_alert("gate", "failed", last_error="boom")
    return p


@pytest.fixture
def settings(tmp_path: Path) -> WebSettings:
    s = WebSettings.from_config({"host": "0.0.0.0", "port": 8080}, data_dir=tmp_path / "data")
    set_password(s.password_file, PASSWORD)
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(port, settings, clock):
    return create_app(
        port, settings, signer=SessionSigner(b"k" * 32, clock=clock), limiter=LoginLimiter(clock=clock)
    )


@pytest.fixture
def anon(app):
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        yield c


def login(c: TestClient, password: str = PASSWORD, nxt: str = "/") -> object:
    page = c.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return c.post("/login", data={"password": password, "csrf": token, "next": nxt})


@pytest.fixture
def user(app):
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        r = login(c)
        assert r.status_code == 303, r.text
        yield c


def put_cookie(c: TestClient, name: str, value: str) -> None:
    c.cookies.delete(name)
    c.cookies.set(name, value)


def all_requests(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, with valid-looking parameters."""
    fill = {
        "device": "gate",
        "event_id": "aaaaaaaaaaaa",
        "variant": "thumb",
        "cmd_id": "cmd-000000000000",
        "alert_id": "bbbbbbbbbbbb",
        "sink": "apprise",
        "recipient": "json-0123456789",
    }
    out = []
    for r in app.routes:
        if isinstance(r, Mount):
            out += [("GET", "/static/app.js"), ("GET", "/static/app.css"), ("GET", "/static/icon-192.png")]
            continue
        assert isinstance(r, Route)
        path = r.path
        for k, v in fill.items():
            path = path.replace("{" + k + "}", v)
        assert "{" not in path, path
        out += [(m, path) for m in sorted(r.methods) if m != "HEAD"]
    return out


def test_loopback_detection() -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.1.2.3")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.168.1.20")
    assert not is_loopback("::") and not is_loopback("gateway.lan")
    assert WebSettings().login_required is False
    assert WebSettings(host="0.0.0.0").login_required is True
    assert WebSettings(host="127.0.0.1", require_login=True).login_required is True
    # Loopback bind behind a reverse proxy that forwards a public name: login is on.
    assert WebSettings(host="127.0.0.1", allowed_hosts=("parcels.example.org",)).login_required is True
    assert WebSettings(host="127.0.0.1", allowed_hosts=("localhost", "127.0.0.1")).login_required is False
    # There is no way to switch the login off when exposed.
    assert WebSettings(host="0.0.0.0", require_login=False).login_required is True


def test_every_route_refused_without_login(app, anon: TestClient) -> None:
    reqs = all_requests(app)
    assert len(reqs) > 20
    for method, path in reqs:
        if path == "/login":
            continue
        r = anon.request(method, path, headers=csrf_headers(anon))
        if method == "GET" and not path.startswith("/api/"):
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (method, path)
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            # The send API from beyond loopback asks for its API token first (gateway/web/guard.py).
            assert r.json()["error"] == ("token_required" if path == "/api/notify" else "login_required")
        assert b"aaaaaaaaaaaa" not in r.content and b"\xff\xd8" not in r.content[:2]


def test_login_page_and_unknown_paths_need_no_secrets(anon: TestClient) -> None:
    r = anon.get("/login")
    assert r.status_code == 200 and 'type="password"' in r.text and "no-store" in r.headers["cache-control"]
    assert anon.get("/../../etc/passwd").status_code in (303, 404)
    assert anon.get("/api/nope").status_code == 401


def test_login_session_cookie_flags_and_access(user: TestClient, port: MemoryPort) -> None:
    assert user.get("/api/events").json()["events"][0]["id"] == "aaaaaaaaaaaa"
    assert user.get("/api/photos/gate/aaaaaaaaaaaa/thumb").content[:2] == b"\xff\xd8"
    assert user.get("/boxes").status_code == 200
    r = user.post("/api/devices/gate/command", json={"cmd": "ping"}, headers=csrf_headers(user))
    assert r.status_code == 202


def test_session_cookie_attributes(app, settings) -> None:
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        r = login(c, nxt="/alerts")
        assert r.status_code == 303 and r.headers["location"] == "/alerts"
        cookies = r.headers.get_list("set-cookie")
        sess = next(x for x in cookies if x.startswith("pb_session="))
        assert "HttpOnly" in sess and "SameSite=Strict" in sess and "Path=/" in sess and "Secure" not in sess
        csrf = next(x for x in cookies if x.startswith("pb_csrf="))
        assert "HttpOnly" not in csrf and "SameSite=Strict" in csrf
    settings.cookie_secure = True
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/login", data={"password": PASSWORD, "csrf": token})
        assert all("Secure" in x for x in r.headers.get_list("set-cookie"))


def test_wrong_password_and_rate_limit(app, anon: TestClient, clock: Clock) -> None:
    for _ in range(5):
        r = login(anon, "wrong password")
        assert r.status_code == 401 and "Wrong password" in r.text
        assert "pb_session" not in anon.cookies
    r = login(anon, PASSWORD)  # right password, but too many failures: refused without checking
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "pb_session" not in anon.cookies
    clock.t += 301
    assert login(anon, PASSWORD).status_code == 303


def test_login_form_needs_its_csrf_field_and_same_origin(anon: TestClient) -> None:
    anon.get("/login")
    assert anon.post("/login", data={"password": PASSWORD}).status_code == 403
    assert anon.post("/login", data={"password": PASSWORD, "csrf": "forged"}).status_code == 403
    token = anon.cookies.get("pb_csrf")
    r = anon.post(
        "/login", data={"password": PASSWORD, "csrf": token}, headers={"origin": "https://evil.example"}
    )
    assert r.status_code == 403
    assert "pb_session" not in anon.cookies


@pytest.mark.parametrize(
    "nxt", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_no_open_redirect_after_login(app, nxt: str) -> None:
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        assert login(c, nxt=nxt).headers["location"] == "/"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/api/devices/gate/command", {"cmd": "reboot"}),
        ("POST", "/api/outbox/{alert}/retry", None),
        ("POST", "/api/whatsapp/unlink", None),
        ("POST", "/api/whatsapp/test", {}),
        ("POST", "/api/whatsapp/pair-code", {"phone": "+6281234567890"}),
        ("POST", "/logout", None),
    ],
)
def test_actions_without_csrf_token_refused(user: TestClient, port: MemoryPort, method, path, body) -> None:
    alert = next(iter(port.outbox))
    path = path.replace("{alert}", alert)
    kw = {"json": body} if body is not None else {}
    for headers in ({}, {"x-csrf-token": "forged"}, {"x-csrf-token": ""}):
        r = user.request(method, path, headers=headers, **kw)
        assert r.status_code == 403 and r.json()["error"] == "csrf", (path, headers)
    # Right token, but sent from another site: still refused.
    for evil in ({"origin": "http://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        r = user.request(method, path, headers={**csrf_headers(user), **evil}, **kw)
        assert r.status_code == 403, (path, evil)
    assert port.commands == [] and port.wa_calls == [] and port.outbox[alert]["state"] == "failed"
    r = user.request(method, path, headers={**csrf_headers(user), "origin": EXPOSED_BASE}, **kw)
    assert r.status_code in (200, 202), (path, r.text)


def test_csrf_cookie_alone_is_not_the_session_token(user: TestClient) -> None:
    # An attacker who plants their own pb_csrf cookie cannot make it match the session's token.
    put_cookie(user, "pb_csrf", "planted")
    r = user.post("/api/devices/gate/command", json={"cmd": "ping"}, headers={"x-csrf-token": "planted"})
    assert r.status_code == 403


def test_logout_ends_the_session(user: TestClient) -> None:
    stolen = user.cookies.get("pb_session")
    r = user.post("/logout", headers=csrf_headers(user))
    assert r.status_code == 200 and "storage" in r.headers["clear-site-data"]
    assert any(c.startswith("pb_session=;") or "Max-Age=0" in c for c in r.headers.get_list("set-cookie"))
    put_cookie(user, "pb_session", stolen)  # replaying the old cookie does not work
    assert user.get("/api/events").status_code == 401


def test_tampered_expired_and_old_password_sessions_refused(app, user: TestClient, settings, clock) -> None:
    good = user.cookies.get("pb_session")
    body, mac = good.split(".")
    put_cookie(user, "pb_session", body + "." + mac[:-2] + ("AA" if not mac.endswith("AA") else "BB"))
    assert user.get("/api/health").status_code == 401
    put_cookie(user, "pb_session", good)
    assert user.get("/api/health").status_code == 200
    clock.t += settings.session_hours * 3600 + 1
    assert user.get("/api/health").status_code == 401
    clock.t -= settings.session_hours * 3600 + 1
    assert user.get("/api/health").status_code == 200
    set_password(settings.password_file, "a brand new password")
    assert user.get("/api/health").status_code == 401


def test_no_password_set_means_no_way_in(port, tmp_path) -> None:
    s = WebSettings.from_config({"host": "0.0.0.0"}, data_dir=tmp_path / "empty")
    with TestClient(create_app(port, s), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        assert "parcelbox web set-password" in c.get("/login").text
        r = login(c, "")
        assert r.status_code in (401, 403) and "pb_session" not in c.cookies
        assert c.get("/api/events").status_code == 401


def test_loopback_needs_no_login_but_still_csrf(port, tmp_path) -> None:
    with TestClient(create_app(port, WebSettings()), base_url=LOCAL_BASE, follow_redirects=False) as c:
        assert c.get("/").status_code == 200
        assert c.get("/login").status_code == 303
        prime(c)
        assert c.post("/api/devices/gate/command", json={"cmd": "ping"}).status_code == 403
        r = c.post(
            "/api/devices/gate/command",
            json={"cmd": "ping"},
            headers={**csrf_headers(c), "origin": "http://evil.example"},
        )
        assert r.status_code == 403
        r = c.post(
            "/api/devices/gate/command",
            json={"cmd": "ping"},
            headers={**csrf_headers(c), "origin": LOCAL_BASE, "sec-fetch-site": "same-origin"},
        )
        assert r.status_code == 202
        assert c.get("/api/health").json()["web"]["refused"]["csrf_token"] == 1


def test_allowed_hosts_when_exposed(port, settings) -> None:
    settings.allowed_hosts = ("parcelbox.lan",)
    with TestClient(
        create_app(port, settings), base_url="http://parcelbox.lan:8080", follow_redirects=False
    ) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400


def test_password_hashing() -> None:
    h = hash_password("s3cret-pass")
    assert h.startswith("scrypt$") and "s3cret" not in h
    assert verify_password("s3cret-pass", h) and not verify_password("s3cret-pasS", h)
    assert hash_password("s3cret-pass") != h  # salted
    for junk in ("", "scrypt$", "md5$1$2$3$4$5", "scrypt$x$8$1$AA$AA", h + "$extra"):
        assert verify_password("s3cret-pass", junk) is False


def test_set_password_command(tmp_path: Path, monkeypatch, capsys) -> None:
    target = tmp_path / "web" / "password"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert set_password_command(target, from_stdin=True) == 1 and not target.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert set_password_command(target, from_stdin=True) == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert verify_password(PASSWORD, target.read_text())
    answers = iter(["one password", "another one"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert set_password_command(target) == 1 and verify_password(PASSWORD, target.read_text())


def test_security_headers_on_every_response(app, anon: TestClient, user: TestClient) -> None:
    for c, path in (
        (anon, "/login"),
        (anon, "/api/events"),
        (anon, "/boxes"),
        (user, "/"),
        (user, "/api/health"),
        (user, "/static/app.js"),
        (user, "/api/photos/gate/aaaaaaaaaaaa/thumb"),
    ):
        r = c.get(path)
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", (
            path
        )


# --- lockouts and sessions across restarts (issue 14, item 10) --------------------------------


def test_wrong_logins_from_many_addresses_do_not_lock_the_owner_out(port, settings, clock) -> None:
    """60 wrong passwords from 30 addresses used to lock everyone out (a global cap of 50)."""
    limiter = LoginLimiter(clock=clock, slow_s=0.001)
    app = create_app(port, settings, signer=SessionSigner(b"k" * 32, clock=clock), limiter=limiter)
    for i in range(60):
        with TestClient(
            app, base_url=EXPOSED_BASE, follow_redirects=False, client=(f"10.0.0.{i % 30 + 1}", 40000)
        ) as c:
            assert login(c, f"guess {i}").status_code == 401
    assert limiter.under_attack()
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False, client=("10.0.9.9", 40000)) as owner:
        assert login(owner, "still wrong").status_code == 401  # slowed, but checked
        r = login(owner)
        assert r.status_code == 303 and owner.cookies.get("pb_session")
        assert owner.get("/api/health").json()["web"]["login_slowed"] >= 2
    # Each address is still limited on its own.
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False, client=("10.0.0.1", 40000)) as c:
        for _ in range(3):
            login(c, "again")
        assert login(c).status_code == 429


def test_the_owners_browser_gets_in_from_an_address_an_attacker_locked(app, clock) -> None:
    """Behind a reverse proxy every client is 127.0.0.1: the device cookie tells the owner apart."""
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as owner:
        r = login(owner)
        device = next(x for x in r.headers.get_list("set-cookie") if x.startswith("pb_device="))
        assert "HttpOnly" in device and "Max-Age=" in device
        owner.post("/logout", headers=csrf_headers(owner))
        with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as attacker:
            for _ in range(5):
                assert login(attacker, "guess").status_code == 401
            assert login(attacker).status_code == 429  # the shared address is locked...
        assert login(owner).status_code == 303  # ...but not for the browser that logged in before
        owner.post("/logout", headers=csrf_headers(owner))
        for _ in range(5):
            assert login(owner, "typo").status_code == 401
        assert login(owner).status_code == 429  # a device has its own limit
        clock.t += 301
        assert login(owner).status_code == 303


def test_forged_device_cookie_counts_as_none(app) -> None:
    with TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as c:
        put_cookie(c, "pb_device", "eyJkZXYiOiJ4In0.forged")
        for _ in range(5):
            login(c, "guess")
        assert login(c).status_code == 429


def test_ipv6_clients_are_limited_per_64() -> None:
    from gateway.web.auth import client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" and client_key("10.0.0.1") == "10.0.0.1"
    assert client_key("testclient") == "testclient"


def test_logged_out_session_stays_dead_after_a_restart(port, settings) -> None:
    with TestClient(create_app(port, settings), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        assert login(c).status_code == 303
        stolen = c.cookies.get("pb_session")
        assert c.post("/logout", headers=csrf_headers(c)).status_code == 200
    assert settings.sessions_file.stat().st_mode & 0o777 == 0o600
    # A restart: a new app reads the key and the revocations from the data folder.
    with TestClient(create_app(port, settings), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        put_cookie(c, "pb_session", stolen)
        assert c.get("/api/health").status_code == 401
        assert login(c).status_code == 303 and c.get("/api/health").status_code == 200


def test_logout_everywhere_ends_every_session_for_good(port, settings) -> None:
    app = create_app(port, settings)
    with (
        TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as phone,
        TestClient(app, base_url=EXPOSED_BASE, follow_redirects=False) as laptop,
    ):
        assert login(phone).status_code == 303 and login(laptop).status_code == 303
        kept = phone.cookies.get("pb_session")
        r = laptop.post("/logout", json={"everywhere": True}, headers=csrf_headers(laptop))
        assert r.status_code == 200
        assert phone.get("/api/health").status_code == 401
    with TestClient(create_app(port, settings), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        put_cookie(c, "pb_session", kept)
        assert c.get("/api/health").status_code == 401


def test_unreadable_revocations_fail_closed(port, settings) -> None:
    with TestClient(create_app(port, settings), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        assert login(c).status_code == 303
        kept = c.cookies.get("pb_session")
    settings.sessions_file.write_text("{not json")
    with TestClient(create_app(port, settings), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        put_cookie(c, "pb_session", kept)
        assert c.get("/api/health").status_code == 401


def test_slowed_attempts_take_turns_and_the_line_is_bounded() -> None:
    import asyncio

    limiter = LoginLimiter(slow_s=0.0, max_waiting=2)

    async def scenario() -> list[bool]:
        order: list[bool] = []
        release = asyncio.Event()

        async def attempt(hold: bool) -> None:
            async with limiter.turn() as ok:
                order.append(ok)
                if ok and hold:
                    await release.wait()

        first = asyncio.create_task(attempt(True))
        await asyncio.sleep(0)  # the first holds its turn
        waiting = [asyncio.create_task(attempt(False)) for _ in range(2)]
        await asyncio.sleep(0)
        await attempt(False)  # a third in line: refused at once, not queued
        release.set()
        await asyncio.gather(first, *waiting)
        return order

    assert asyncio.run(scenario()) == [True, False, True, True]
    assert limiter.slowed == 3 and limiter.refused == 1
