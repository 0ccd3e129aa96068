"""The dashboard's languages, server side: the two catalogues agree, the page's language is chosen
from the browser's pick (cookie), its Accept-Language, then the config, and the login and not-found
pages are rendered in it. The JSON API stays English whatever the page speaks."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.config import ConfigError, load_config
from gateway.web import WebSettings, create_app, i18n
from gateway.web.auth import set_password
from gateway.web.server import web_component
from tests.support.web import LOCAL_BASE, MemoryPort

EXPOSED_BASE = "http://192.168.1.20:8080"
EN, ID = i18n.catalogue("en"), i18n.catalogue("id")


# --- the catalogues ------------------------------------------------------------------------------


def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    assert set(EN) == set(ID), f"only in en: {set(EN) - set(ID)}; only in id: {set(ID) - set(EN)}"
    for key in EN:
        assert EN[key].strip() and ID[key].strip(), key
        assert i18n.placeholders(EN[key]) == i18n.placeholders(ID[key]), key
        # No stray braces a typo would leave: every { opens a known placeholder.
        for text in (EN[key], ID[key]):
            assert text.count("{") == text.count("}") == len(i18n.PLACEHOLDER_RE.findall(text)), key


def test_count_pairs_are_complete() -> None:
    for key in EN:
        if key.endswith("_one"):
            assert key[: -len("_one")] + "_other" in EN, key
        if key.endswith("_other"):
            assert key[: -len("_other")] + "_one" in EN, key


def test_indonesian_agrees_with_the_whatsapp_captions() -> None:
    """Where the dashboard and WhatsApp say the same thing they use the same words."""
    from gateway.captions import waiting_text

    assert waiting_text(3, "id") == "3 paket menunggu."
    assert ID["box.waiting_other"] == "paket menunggu"
    assert ID["box.lid"] == "Tutup" and ID["box.battery"] == "Baterai"
    assert ID["box.last_seen"] == "Terakhir terlihat" and ID["type.delivery"] == "Paket diterima"


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("id-ID,id;q=0.9,en-US;q=0.8,en;q=0.7", "id"),
        ("en-US,en;q=0.9,id;q=0.8", "en"),
        ("fr-FR, id;q=0.5, en;q=0.4", "id"),
        ("en;q=0.2, id;q=0.9", "id"),
        ("in-ID", "id"),  # Indonesian's old code
        ("id;q=0, en;q=0.1", "en"),  # q=0: "not this one"
        ("fr, de", None),
        ("*", None),
        ("", None),
        (None, None),
        ("id;q=abc", None),
        ("id;q=2", None),
        (",,,;;;===" * 300, None),
        ("de," * 5000 + "id", None),  # only the first entries are read
    ],
)
def test_accept_language(header, want) -> None:
    assert i18n.from_accept_language(header) == want


def test_choice_order_cookie_then_browser_then_config() -> None:
    assert i18n.choose_language("en", "id", "id") == "en"
    assert i18n.choose_language("xx", "id", "en") == "id"
    assert i18n.choose_language(None, "fr", "id") == "id"
    assert i18n.choose_language(None, None, "klingon") == "en"


def test_host_timezone(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Asia/Jakarta")
    assert i18n.host_timezone({}, link) == "Asia/Jakarta"
    assert i18n.host_timezone({"TZ": ":Asia/Makassar"}, link) == "Asia/Makassar"
    assert i18n.host_timezone({"TZ": "/etc/localtime"}, link) == "Asia/Jakarta"
    assert i18n.host_timezone({}, tmp_path / "missing") == ""
    (tmp_path / "timezone").write_text("Asia/Jayapura\n")
    assert i18n.host_timezone({}, tmp_path / "missing") == "Asia/Jayapura"


# --- served pages --------------------------------------------------------------------------------


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.01)
    p.add_device("gate", "Pagar depan")
    p.add_event("gate", "delivery", event_id="aaaaaaaaaaaa")
    return p


def local(port: MemoryPort, **kw) -> TestClient:
    return TestClient(create_app(port, WebSettings(**kw)), base_url=LOCAL_BASE, follow_redirects=False)


def test_page_language_follows_cookie_then_accept_language_then_config(port) -> None:
    with local(port, language="id", timezone="Asia/Jakarta") as c:
        r = c.get("/")
        assert '<html lang="id">' in r.text  # nothing asked: the config's
        assert "Accept-Language" in r.headers["vary"] and "Cookie" in r.headers["vary"]
        assert '<html lang="en">' in c.get("/boxes", headers={"accept-language": "en-GB"}).text
        c.cookies.set(i18n.LANG_COOKIE, "id")
        assert '<html lang="id">' in c.get("/alerts", headers={"accept-language": "en-GB"}).text
        c.cookies.set(i18n.LANG_COOKIE, "<script>")  # hostile cookie: ignored
        assert '<html lang="en">' in c.get("/", headers={"accept-language": "en"}).text


def test_i18n_script_carries_both_catalogues_zone_and_default(port) -> None:
    with local(port, language="id", timezone="Asia/Jakarta") as c:
        r = c.get("/i18n.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        m = re.fullmatch(r"(?s)//[^\n]*\nself\.PB_I18N = (.*);\n", r.text)
        data = json.loads(m.group(1))
        assert data["default"] == "id" and data["timezone"] == "Asia/Jakarta"
        assert data["catalogues"] == {"en": EN, "id": ID}
        assert "<" not in r.text.split("\n", 1)[1].replace("\\u003c", "")  # never closes a <script>


def test_json_api_stays_english_whatever_the_language(port) -> None:
    with local(port, language="id") as c:
        c.cookies.set(i18n.LANG_COOKIE, "id")
        hdr = {"accept-language": "id"}
        assert (
            c.get("/api/devices", headers=hdr).json()
            == c.get("/api/devices", headers={"accept-language": "en"}).json()
        )
        err = c.get("/api/events?type=nope", headers=hdr).json()
        assert err["error"] == "bad_type" and err["detail"].startswith("type must be one")
        assert c.get("/api/events", headers=hdr).json()["events"][0]["type"] == "delivery"


def test_not_found_page_in_the_page_language(port) -> None:
    with local(port) as c:
        r = c.get("/nowhere", headers={"accept-language": "id"})
        assert r.status_code == 404 and '<html lang="id">' in r.text and ID["notfound.title"] in r.text
        assert "Not found" in c.get("/nowhere", headers={"accept-language": "en"}).text


@pytest.fixture
def exposed(port: MemoryPort, tmp_path: Path):
    s = WebSettings.from_config({"host": "0.0.0.0", "language": "id"}, data_dir=tmp_path / "data")
    set_password(s.password_file, "correct horse battery")
    with TestClient(create_app(port, s), base_url=EXPOSED_BASE, follow_redirects=False) as c:
        yield c


def visible_text(html_text: str) -> str:
    body = re.sub(r"(?s)<style.*?</style>|<svg.*?</svg>", "", html_text)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_login_page_in_indonesian_and_switchable(exposed: TestClient) -> None:
    r = exposed.get("/login")
    assert '<html lang="id">' in r.text
    text = visible_text(r.text)
    for key in ("login.title", "login.intro", "login.password", "login.submit"):
        assert ID[key] in r.text, key
    for english in ("Log in", "Password", "dashboard"):
        assert english not in text, english
    # The language links: remembered in the pb_lang cookie, as the dashboard's own switch does.
    r = exposed.get("/login?lang=en&next=/boxes")
    assert '<html lang="en">' in r.text and EN["login.submit"] in r.text
    assert r.cookies.get(i18n.LANG_COOKIE) == "en"
    assert 'href="/login?lang=id&amp;next=/boxes"' in r.text
    assert '<html lang="en">' in exposed.get("/login").text


def test_login_errors_in_the_page_language(exposed: TestClient) -> None:
    page = exposed.get("/login", headers={"accept-language": "id"})
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = exposed.post("/login", data={"password": "wrong one!", "csrf": token, "next": "/"})
    assert r.status_code == 401 and ID["login.wrong"] in r.text
    r = exposed.post("/login", data={"password": "x", "csrf": "stale", "next": "/"})
    assert r.status_code == 403 and ID["login.expired"] in r.text


def test_next_is_escaped_in_the_language_links(exposed: TestClient) -> None:
    r = exposed.get('/login?next=/a"b<c>&lang=id')
    assert '"b<c>' not in r.text


# --- where the defaults come from ---------------------------------------------------------------


def component_settings(tmp_path: Path, toml: str) -> WebSettings:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    config = load_config(f, env={})
    service = MemoryPort(tmp_path / "photos")
    service.data_dir = tmp_path / "data"  # type: ignore[attr-defined]
    srv = web_component(service, config)
    assert srv is not None and srv.data_dir == tmp_path / "data"  # web.json still goes to the data folder
    return srv.settings


def test_web_language_defaults_from_whatsapp_language_and_zone_from_alerts(tmp_path: Path) -> None:
    s = component_settings(tmp_path, '[whatsapp]\nlanguage = "id"\n[alerts]\ntimezone = "Asia/Makassar"\n')
    assert (s.language, s.timezone) == ("id", "Asia/Makassar")
    s = component_settings(tmp_path, '[web]\nlanguage = "en"\n[whatsapp]\nlanguage = "id"\n')
    assert s.language == "en"
    s = component_settings(tmp_path, "")
    assert s.language == "en" and s.timezone == i18n.host_timezone()
    with pytest.raises(ConfigError, match="web.language"):
        component_settings(tmp_path, '[web]\nlanguage = "jv"\n')


# --- the catalogue and the code agree ----------------------------------------------------------

STATIC = Path(i18n.__file__).parents[1] / "static"
# Keys app.js builds from an API name (t("type." + e.type)): the prefix stands for every key under it.
DYNAMIC_PREFIXES = (
    "type.",
    "cmd.",
    "nav.",
    "alerts.state.",
    "alerts.receipt.",
    "wa.state.",
    "wa.desc.",
    "box.signal_",
    "error.",
)


def used_keys() -> tuple[set[str], set[str]]:
    """(literal keys, dynamic prefixes) used by the page, the script, the worker and the server."""
    html_ = (STATIC / "index.html").read_text() + (STATIC / "login.html").read_text()
    js = (STATIC / "app.js").read_text() + (STATIC / "lang.js").read_text() + (STATIC / "sw.js").read_text()
    js = re.sub(r"(?m)^\s*//.*$|\s//\s.*$", "", js)  # comments mention t("key") as an example
    py = (STATIC.parent / "app.py").read_text()
    keys = set(re.findall(r'data-i18n="([a-z0-9_.]+)"', html_))
    for attr in re.findall(r'data-i18n-attr="([^"]+)"', html_):
        keys |= {pair.split(":")[1].strip() for pair in attr.split(";")}
    keys |= set(re.findall(r"\{\{t:([a-z0-9_.]+)\}\}", html_))
    keys |= set(re.findall(r'\bt\("([a-z0-9_.]+)"', js))
    keys |= {k for k in re.findall(r'"([a-z]+\.[a-z0-9_.]+)"', js) if k in EN}  # t(cond ? "a.b" : "a.c")
    keys |= {f"{k}_{n}" for k in re.findall(r'\btn\("([a-z0-9_.]+)"', js) for n in ("one", "other")}
    keys |= set(re.findall(r'word\("([a-z0-9_.]+)"', js))
    keys |= set(re.findall(r'label\("([a-z0-9_.]+)"', js))  # label("cmd.", name): a prefix
    keys |= set(re.findall(r'i18n\.t\(\s*lang,\s*"([a-z0-9_.]+)"', py))
    keys |= {k for k in re.findall(r'"([a-z]+\.[a-z0-9_.]+)"', py) if k in EN}
    prefixes = {k for k in keys if k.endswith((".", "_"))}
    return keys - prefixes, prefixes


def test_every_key_used_exists_and_every_key_is_used() -> None:
    keys, prefixes = used_keys()
    missing = sorted(k for k in keys if k not in EN)
    assert not missing, f"used but not in the catalogues: {missing}"
    assert prefixes <= set(DYNAMIC_PREFIXES), prefixes - set(DYNAMIC_PREFIXES)
    for p in prefixes:
        assert any(k.startswith(p) for k in EN), p
    # offline.notice: the "can't reach your gateway" line of the offline mode (issue 15), translated
    # ahead of it so the two branches meet in one catalogue.
    unused = sorted(k for k in EN if k not in keys | {"offline.notice"} and not k.startswith(tuple(prefixes)))
    assert not unused, f"in the catalogues but used nowhere: {unused}"


def test_served_page_is_already_in_the_page_language(port) -> None:
    """The server fills in the words too, so the first paint (and the worker's saved copy) is right."""
    with local(port) as c:
        body = c.get("/", headers={"accept-language": "id-ID"}).text
    texts = re.findall(r'data-i18n="([a-z0-9_.]+)"[^<>]*>([^<]*)<', body)
    assert len(texts) > 30
    for key, text in texts:
        assert html.unescape(text) == ID[key], key
    for attr, key in re.findall(r'data-i18n-attr="([a-z-]+):([a-z0-9_.]+)"', body):
        assert f'{attr}="{ID[key]}"' in body, key


def test_manifest_description_in_the_page_language(port) -> None:
    with local(port) as c:
        r = c.get("/manifest.webmanifest", headers={"accept-language": "id"})
        assert r.headers["content-type"].startswith("application/manifest+json")
        m = r.json()
        assert m["lang"] == "id" and m["description"] == ID["manifest.description"]
        assert m["name"] == "parcelbox" and m["icons"]
        assert (
            c.get("/manifest.webmanifest", headers={"accept-language": "en"}).json()["description"]
            == (EN["manifest.description"])
        )
