"""serve-local's /docs (Swagger UI) and /redoc work with no internet: each page references only same-origin URLs
(no scheme, no host: nothing a CDN serves), and every script, style sheet, icon and spec it references is
served by the server itself (200, the right content type, the right bundle), with and without an API key, in
both --api modes, over real HTTP on 127.0.0.1; behind a proxy's prefix (uvicorn's root_path) they keep it.
scripts/docs_screenshot.sh renders /docs in a headless browser with the network blocked."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import httpx
import pytest

from hadskip.runtime.serve import ServeConfig, create_app
from hadskip.runtime.serve.app import DOCS_STATIC
from tests.test_server import Hooked, Served, metric

pytest.importorskip("uvicorn")

# what each page must load, and a name its bundle defines (an empty or wrong file fails)
PAGES = {"/docs": {".js": "SwaggerUIBundle", ".css": ".swagger-ui"}, "/redoc": {".js": "Redoc"}}
ABSOLUTE = re.compile(r"[^\s'\"]*://[^\s'\"]*")
TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


class _Refs(HTMLParser):
    """The URLs a page makes the browser fetch: src/href/spec-url attributes and SwaggerUIBundle's `url:`."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.script = False

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url", "data", "action", "poster") and v]
        self.script = tag == "script"

    def handle_endtag(self, tag):
        self.script = False

    def handle_data(self, data):
        if self.script:
            self.urls += re.findall(r"""\burl\s*:\s*['"]([^'"]+)['"]""", data)


def references(html: str) -> list[str]:
    refs = _Refs()
    refs.feed(html)
    return refs.urls


def suffix(url: str) -> str:
    path = url.split("?")[0]
    return path[path.rfind("."):] if "." in path.rsplit("/", 1)[-1] else ""


def check_page(client: httpx.Client, page: str, prefix: str = "") -> list[str]:
    r = client.get(page)  # a proxy forwards it without the prefix
    assert r.status_code == 200, (page, r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "://" not in html, f"{page} names an absolute URL: {ABSOLUTE.findall(html)}"
    urls = references(html)
    assert urls, f"{page} references nothing"
    for url in urls:
        assert url.startswith(prefix + "/") and not url.startswith("//"), f"{page}: {url!r} is not same-origin"
    kinds = {suffix(u) for u in urls}
    assert prefix + "/openapi.json" in urls, urls
    missing = set(PAGES[page]) - kinds
    assert not missing, f"{page} loads no {missing}: {urls}"
    for url in urls:
        asset = client.get(url.removeprefix(prefix))
        assert asset.status_code == 200, (page, url, asset.status_code)
        ext = suffix(url)
        assert TYPES[ext] in asset.headers["content-type"], (url, asset.headers["content-type"])
        if ext in PAGES[page]:
            assert PAGES[page][ext] in asset.text, f"{url} is not the {PAGES[page][ext]} bundle"
        if ext == ".json":
            assert "/predict" in asset.json()["paths"]
    return urls


@pytest.fixture(scope="module", params=[("hadskip", None), ("tei", None), ("hadskip", "s3cret"), ("tei", "s3cret")],
                ids=lambda p: f"{p[0]}{'-key' if p[1] else ''}")
def server(request, rt):
    api, key = request.param
    app = create_app(ServeConfig(api=api, api_key=key, graceful_timeout_s=5), lambda: Hooked(rt), "tiny")
    with Served(app) as srv:
        yield srv


@pytest.mark.parametrize("page", sorted(PAGES))
def test_docs_pages_need_no_internet(server, page):
    """Every asset a docs page loads comes from this server; none needs the API key (probes and people)."""
    headers = {"Authorization": "Bearer s3cret"}
    before = server.client.get("/metrics", headers=headers).text
    urls = check_page(server.client, page)
    static = [u for u in urls if u.startswith(DOCS_STATIC + "/")]
    assert static, urls
    # the files are one endpoint, not "other"; a request is counted as its response ends, so wait for the last
    deadline = time.monotonic() + 10
    while True:
        counted = static_requests(server.client.get("/metrics", headers=headers).text) - static_requests(before)
        if counted >= len(static) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == len(static)


def static_requests(metrics_text: str) -> float:
    try:
        return metric(metrics_text, "hadskip_requests_total", endpoint=DOCS_STATIC)
    except AssertionError:  # not counted yet
        return 0.0


def test_docs_assets_honour_root_path(rt):
    """Behind a proxy that strips a prefix (uvicorn's root_path, as `uvicorn --root-path /hadskip` sets it), the
    pages' URLs keep the prefix, and each one, stripped as that proxy would, is served."""
    app = create_app(ServeConfig(graceful_timeout_s=5), lambda: Hooked(rt), "tiny")
    srv = Served(app)
    srv.server.config.root_path = "/hadskip"
    with srv:
        for page in PAGES:
            check_page(srv.client, page, prefix="/hadskip")


def test_missing_fastapi_offline_names_the_serve_extra(tmp_path, monkeypatch):
    """An install of the serve extra from before fastapi-offline was in it: one line naming the extra."""
    from hadskip.errors import MissingExtraError
    from tests.test_cli_errors import _without

    proc = _without("fastapi_offline", "serve-local", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "fastapi_offline" in proc.stderr and "hadskip[serve]" in proc.stderr, proc.stderr
    monkeypatch.setitem(__import__("sys").modules, "fastapi_offline", None)  # `import fastapi_offline` fails
    with pytest.raises(MissingExtraError, match=r"hadskip\[serve\]"):
        create_app(ServeConfig(), lambda: None)
