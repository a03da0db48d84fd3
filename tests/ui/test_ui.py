"""The web dashboard in a real browser (headless Chromium driven by Selenium), against
real daemons on loopback: alpha (config `ui = true`) meshed with beta and gamma.

The tests run in file order and share the mesh: the cross-site request and the
confirmation happen before beta is removed; gamma is stopped after that; delta pairs
through alpha's page; epsilon (dashboard started by `cnspr ui`, not by its config) joins
alpha's mesh through its own page.
"""

from __future__ import annotations

import http.server as httpserver
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from selenium.webdriver.common.by import By

from harness import (DEADLINE, Daemon, browser, http, split_url, trust_both, wait_active,
                     wait_for)

ARTIFACTS = Path(os.environ.get("UI_ARTIFACTS", "/tmp/cnspr-ui-artifacts"))


@pytest.fixture(scope="module")
def mesh() -> Iterator[Dict[str, Daemon]]:
    ds: List[Daemon] = []
    try:
        alpha = Daemon("alpha", ui=True)
        ds.append(alpha)
        for n in ("beta", "gamma"):
            ds.append(Daemon(n))
        for d in ds:
            d.start()
        a, b, c = ds
        trust_both(a, b)
        trust_both(a, c)
        trust_both(b, c)
        wait_active(a, ["beta", "gamma"])
        yield {d.name: d for d in ds}
    finally:
        for d in ds:
            d.stop()
        for d in ds:
            d.remove_dir()


@pytest.fixture(scope="module")
def page(mesh: Dict[str, Daemon]) -> Iterator[Any]:
    drv = browser()
    try:
        yield drv
    finally:
        drv.quit()


def row_state(drv: Any, name: str) -> str:
    rows = drv.find_elements(By.CSS_SELECTOR, f'#devices tr[data-name="{name}"] td.state')
    return rows[0].text if rows else ""


def open_dashboard(drv: Any, url: str) -> None:
    drv.get(url)
    wait_for("the page to be ready", lambda: drv.execute_script(
        "return document.body && (document.body.dataset.ready || document.body.dataset.error)"))
    err = drv.execute_script("return document.body.dataset.error")
    assert not err, f"the page failed: {err}"


def test_refused_without_the_token(mesh: Dict[str, Daemon], page: Any) -> None:
    url = mesh["alpha"].ui_url()
    base, token = split_url(url)
    # No token, a wrong one, and the API without the cookie: 403, nothing served.
    for u in (base + "/", base + "/?token=" + "0" * 64, base + "/api/peers", base + "/app.js"):
        status, _, body = http(u)
        assert status == 403, (u, status, body)
        assert b"beta" not in body
    # The right token through another Host name (DNS rebinding) is refused too.
    status, _, _ = http(url, headers={"Host": "rebind.example:" + base.rsplit(":", 1)[1]})
    assert status == 403
    # In the browser: the bare address shows the refusal, not the dashboard.
    page.get(base + "/")
    assert "forbidden" in page.find_element(By.TAG_NAME, "body").text
    assert not page.find_elements(By.ID, "devices")


def test_loads_with_the_token_and_lists_the_devices(mesh: Dict[str, Daemon], page: Any) -> None:
    url = mesh["alpha"].ui_url()
    base, _ = split_url(url)
    open_dashboard(page, url)
    # The token moved into the cookie: the address bar no longer shows it.
    assert page.current_url == base + "/", page.current_url
    cookie = page.get_cookie("cnspr_ui")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert page.execute_script("return document.cookie") == ""
    for n in ("beta", "gamma"):
        wait_for(f"{n} active in the page", lambda n=n: row_state(page, n) == "active")
        row = page.find_element(By.CSS_SELECTOR, f'#devices tr[data-name="{n}"]')
        assert mesh[n].addr in row.find_element(By.CSS_SELECTOR, "td.addrs").text
        assert row.find_element(By.CSS_SELECTOR, "td.rtt").text.endswith(" ms")
        assert row.find_element(By.CSS_SELECTOR, "td.path").text == "direct"
    # The mesh picture: a node per device and a link to each active peer.
    wait_for("the mesh picture", lambda: len(page.find_elements(By.CSS_SELECTOR, "#mesh .node")) == 3)
    links = page.find_elements(By.CSS_SELECTOR, "#mesh line.link")
    assert sorted(l.get_attribute("data-peer") for l in links) == ["beta", "gamma"]
    wait_for("the live feed", lambda: page.find_element(By.ID, "live").text == "live")


def test_events_reach_the_page_live(mesh: Dict[str, Daemon], page: Any) -> None:
    """Messages from beta show up in alpha's page as they arrive; how late the feed's
    items reach the page is printed (bench/ui.py reports it with the idle figures)."""
    before = page.execute_script("return window.cnsprFeed.count")
    n = 20
    for i in range(n):
        mesh["beta"].cli("send", "alpha", "ui.test", f"hello {i}")
    wait_for("the messages in the page", lambda: page.execute_script(
        "return window.cnsprFeed.count") >= before + n)
    wait_for("the last message in the event list", lambda: any(
        "ui.test from beta" in e.text for e in page.find_elements(By.CSS_SELECTOR, "#events li")))
    late = page.execute_script("return window.cnsprFeed.lateMs")[-n:]
    print(f"\nfeed: {len(late)} items, late by median {statistics.median(late):.0f} ms, "
          f"max {max(late)} ms")


def test_handler_runs_are_shown_with_their_exit_codes(mesh: Dict[str, Daemon],
                                                     page: Any) -> None:
    """A handler run on alpha appears in the list with its exit code (a failing one with
    its code too)."""
    handlers = mesh["alpha"].dir / "handlers" / "run"
    handlers.mkdir(parents=True, exist_ok=True)
    for name, code in (("ok", 0), ("bad", 3)):
        h = handlers / name
        h.write_text(f"#!/bin/sh\nexit {code}\n")
        h.chmod(0o755)
    # The handler directory is watched; a send right after may precede the rescan.
    wait_for("the handlers to be known", lambda: "run/bad" in mesh["alpha"].cli("handlers"))
    for name in ("ok", "bad"):
        mesh["beta"].cli("send", "alpha", f"run.{name}", "x")

    def shown() -> bool:
        texts = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#events li.run")]
        return (any("handler run/ok (run.ok): exit 0" in t for t in texts)
                and any("handler run/bad (run.bad): exit 3" in t for t in texts))
    wait_for("both runs in the page with their exit codes", shown)


class Evil(httpserver.BaseHTTPRequestHandler):
    """A page of another origin that tries to remove beta through the dashboard."""
    target = ""

    def do_GET(self) -> None:
        t = self.target
        html = f"""<!DOCTYPE html><html><body>
<form id="f" method="POST" action="{t}/api/remove" target="sink" enctype="text/plain">
<input name='{{"peer":"beta","x":"' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
fetch("{t}/api/remove", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{peer: "beta"}})}})
  .catch(() => {{}})
  .finally(() => {{
    fetch("{t}/api/remove", {{method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json", "X-CNSPR-CSRF": "guess"}},
      body: JSON.stringify({{peer: "beta"}})}})
      .catch(() => {{}})
      .finally(() => {{
        document.getElementById("f").submit();
        setTimeout(() => {{ document.title = "done"; }}, 500);
      }});
  }});
</script></body></html>"""
        body = html.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:
        pass


def test_a_cross_site_request_changes_nothing(mesh: Dict[str, Daemon], page: Any) -> None:
    alpha = mesh["alpha"]
    base, _ = split_url(alpha.ui_url())
    cookie = page.get_cookie("cnspr_ui")["value"]
    Evil.target = base
    srv = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        # The browser holds the dashboard's cookie; another origin fires a no-cors POST,
        # a JSON POST with a guessed CSRF header, and a form POST at it.
        page.get(f"http://127.0.0.1:{srv.server_address[1]}/")
        wait_for("the other origin's requests", lambda: page.title == "done")
    finally:
        srv.shutdown()
    # Even with the cookie, a POST without the CSRF header or from another Origin fails.
    body = b'{"peer":"beta"}'
    h = {"Cookie": "cnspr_ui=" + cookie, "Content-Type": "application/json"}
    assert http(base + "/api/remove", "POST", h, body)[0] == 403
    h2 = dict(h, **{"Origin": "http://127.0.0.1:1"})
    assert http(base + "/api/remove", "POST", h2, body)[0] == 403
    h3 = dict(h, **{"Origin": base, "X-CNSPR-CSRF": "0" * 64})
    assert http(base + "/api/remove", "POST", h3, body)[0] == 403
    # A GET cannot change anything either.
    assert http(base + "/api/remove", "GET", {"Cookie": "cnspr_ui=" + cookie})[0] == 405
    assert alpha.peer("beta")["state"] == "active"
    assert mesh["beta"].peer("alpha")["state"] == "active"


def test_remove_asks_first(mesh: Dict[str, Daemon], page: Any) -> None:
    alpha = mesh["alpha"]
    open_dashboard(page, alpha.ui_url())
    wait_for("beta listed", lambda: row_state(page, "beta") == "active")

    def click_remove() -> None:
        page.find_element(By.CSS_SELECTOR, '#devices tr[data-name="beta"] button[data-action="remove"]').click()
        wait_for("the confirmation", lambda: page.find_element(By.ID, "confirm").get_attribute("open") is not None)
        assert "beta" in page.find_element(By.ID, "confirm-text").text

    click_remove()
    page.find_element(By.ID, "confirm-cancel").click()
    wait_for("the dialog closed", lambda: page.find_element(By.ID, "confirm").get_attribute("open") is None)
    assert alpha.peer("beta")["state"] == "active"
    click_remove()
    page.find_element(By.ID, "confirm-ok").click()
    wait_for("beta removed in the page", lambda: row_state(page, "beta") == "removed")
    assert alpha.peer("beta")["state"] == "removed"
    wait_for("gamma learns the removal", lambda: mesh["gamma"].peer("beta")["state"] == "removed")


def test_a_stopped_device_shows_left_within_2s(mesh: Dict[str, Daemon], page: Any) -> None:
    wait_for("gamma active", lambda: row_state(page, "gamma") == "active")
    mesh["gamma"].proc.send_signal(15)  # SIGTERM: a graceful stop
    t0 = time.monotonic()
    wait_for("gamma left in the page", lambda: row_state(page, "gamma") == "left", deadline=2.0, step=0.01)
    print(f"\ngamma shown as left {1000 * (time.monotonic() - t0):.0f} ms after its SIGTERM")
    mesh["gamma"].stop()


def test_pairing_through_the_page(mesh: Dict[str, Daemon], page: Any) -> None:
    delta = Daemon("delta")
    try:
        delta.start()
        # A window closed from the page says so.
        page.find_element(By.ID, "pair-open").click()
        wait_for("a window open", lambda: page.find_element(By.ID, "pair-window").get_attribute("data-state") == "open")
        page.find_element(By.ID, "pair-cancel").click()
        wait_for("the window cancelled", lambda: page.find_element(
            By.ID, "pair-window").get_attribute("data-state") == "cancelled")
        assert not page.find_element(By.ID, "pair-qr").is_displayed()
        page.find_element(By.ID, "pair-open").click()
        wait_for("a new window", lambda: page.find_element(By.ID, "pair-window").get_attribute("data-state") == "open")
        wait_for("the window's code", lambda: page.find_element(By.ID, "pair-code").text)
        code = page.find_element(By.ID, "pair-code").text
        assert page.find_element(By.ID, "pair-window").get_attribute("data-state") == "open"
        # The QR code is drawn from this origin (CSP allows nothing else).
        wait_for("the QR code", lambda: page.execute_script(
            "const i = document.getElementById('pair-qr'); return i.complete && i.naturalWidth > 0"))
        addrs = page.find_element(By.ID, "pair-addrs").text
        port = addrs.split(",")[0].rsplit(":", 1)[1]
        out = delta.cli("pair", code, "--addr", f"127.0.0.1:{port}", "--timeout", "20")
        assert "alpha" in out, out
        wait_for("the page shows the pairing", lambda: page.find_element(
            By.ID, "pair-window").get_attribute("data-state") == "paired")
        assert "delta" in page.find_element(By.ID, "pair-state").text
        wait_for("delta active in the page", lambda: row_state(page, "delta") == "active")
        shot(page, "dashboard.png")
    finally:
        delta.stop()
        delta.remove_dir()


def test_joining_a_mesh_through_the_page(mesh: Dict[str, Daemon], page: Any) -> None:
    alpha = mesh["alpha"]
    # No `ui` in its config: the first `cnspr ui` starts the dashboard, later ones give
    # the same URL.
    eps = Daemon("epsilon")
    window = None
    try:
        eps.start()
        window = subprocess.Popen(alpha.args() + ["--json", "pair", "--timeout", "60"],
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)

        first = json.loads(window.stdout.readline())
        port = first["addresses"][0].rsplit(":", 1)[1]
        url = eps.ui_url()
        assert eps.ui_url() == url
        # Without --no-open but with no terminal (and no display): only printed.
        assert eps.cli("ui").strip() == url
        assert not (eps.dir / "ui.html").exists()
        open_dashboard(page, url)
        # A wrong code: the page shows the failure, nothing is paired.
        wrong = "000-000" if first["code"] != "000-000" else "000-001"
        page.find_element(By.ID, "join-code").send_keys(wrong)
        page.find_element(By.ID, "join-addr").send_keys(f"127.0.0.1:{port}")
        page.find_element(By.CSS_SELECTOR, "#join-form button").click()
        wait_for("the wrong code's outcome", lambda: page.find_element(By.ID, "join-result").get_attribute("data-state"))
        assert page.find_element(By.ID, "join-result").get_attribute("data-state") == "failed"
        assert "code" in page.find_element(By.ID, "join-result").text.lower()
        assert eps.json("peers") == []
        page.execute_script("document.getElementById('join-result').removeAttribute('data-state')")
        page.find_element(By.ID, "join-code").clear()
        page.find_element(By.ID, "join-addr").clear()
        page.find_element(By.ID, "join-code").send_keys(first["code"])
        page.find_element(By.ID, "join-addr").send_keys(f"127.0.0.1:{port}")
        page.find_element(By.CSS_SELECTOR, "#join-form button").click()
        wait_for("the join's outcome", lambda: page.find_element(By.ID, "join-result").get_attribute("data-state"))
        assert page.find_element(By.ID, "join-result").get_attribute("data-state") == "paired", \
            page.find_element(By.ID, "join-result").text
        wait_for("alpha active in epsilon's page", lambda: row_state(page, "alpha") == "active")
        window.wait(timeout=30)
    finally:
        if window is not None and window.poll() is None:
            window.kill()
            window.wait()
        eps.stop()
        eps.remove_dir()


def test_store_and_events_are_shown(mesh: Dict[str, Daemon], page: Any) -> None:
    alpha = mesh["alpha"]
    alpha.cli("kv", "put", "notes/today", "buy milk")
    alpha.cli("kv", "put", "notes/later", "call home")
    open_dashboard(page, alpha.ui_url())
    page.find_element(By.ID, "kv-prefix").send_keys("notes/")
    page.find_element(By.CSS_SELECTOR, "#kv-form button").click()
    wait_for("the keys", lambda: len(page.find_elements(By.CSS_SELECTOR, "#kv-keys li.key")) == 2)
    keys = [k.text for k in page.find_elements(By.CSS_SELECTOR, "#kv-keys li.key")]
    assert keys == ["notes/later", "notes/today"], keys
    page.find_elements(By.CSS_SELECTOR, "#kv-keys li.key")[1].click()
    wait_for("the versions", lambda: page.find_elements(By.CSS_SELECTOR, "#kv-versions td.value"))
    v = page.find_element(By.CSS_SELECTOR, "#kv-versions td.value").text
    assert v == "buy milk", v
    # Recent events: what happened so far (gamma left, beta removed), newest first.
    texts = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#events li")]
    assert any("gamma" in t and "left" in t for t in texts), texts
    assert any("peer.removed" in t and "beta" in t for t in texts), texts


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / name
    page.save_screenshot(str(p))
    print(f"\nscreenshot: {p}")


def test_connections_are_capped(mesh: Dict[str, Daemon]) -> None:
    """64 open connections take every slot: the next one is closed at once, unanswered;
    once one of them closes, a new one is served; the daemon itself is unaffected. Idle
    connections are closed by the dashboard."""
    import socket
    zeta = Daemon("zeta", ui=True)
    socks: List[socket.socket] = []
    try:
        zeta.start()
        base, _ = split_url(zeta.ui_url())
        port = int(base.rsplit(":", 1)[1])
        request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()

        def answer() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                try:
                    s.sendall(request)
                    return s.recv(64)
                except ConnectionError:
                    return b""

        for _ in range(64):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        # Each idle connection is served (its slot taken) before the next test.
        assert answer() == b"", "a 65th connection was served"
        assert zeta.json("status")["name"] == "zeta"
        socks.pop(0).close()
        wait_for("a new connection served", lambda: answer().startswith(b"HTTP/1.1 403"))
        # Connections silent both ways are closed after 20 s, freeing their slots.
        t0 = time.monotonic()
        for s in socks:
            s.settimeout(DEADLINE)
            try:
                assert s.recv(1) == b"", "an idle connection got data"
            except ConnectionResetError:
                pass
        print(f"\nidle connections closed after {time.monotonic() - t0:.1f} s")
    finally:
        for s in socks:
            s.close()
        zeta.stop()
        zeta.remove_dir()
