"""The status page's files, served from the package: nothing comes from a CDN.

The page is ``static/status.html`` with its script and style beside it, and
uPlot (1.6.32, MIT, ``static/uPlot.LICENSE``) for the charts. The login page
is what ``/`` answers a browser without the token: it asks for it, keeps it in
the tab's session storage and loads the page with it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

#: The files under ``/static/`` and their content types; nothing else is served.
STATIC = {
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("edgeinfer.http") / "static" / name).read_bytes()


def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of the page and its content type, or None for any other name."""
    content_type = STATIC.get(name)
    return None if content_type is None else (_read(name), content_type)


def status_page() -> bytes:
    """The status page (``/``)."""
    return _read("status.html")


LOGIN_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeinfer: token</title>
<link rel="stylesheet" href="/static/status.css"></head>
<body><main class="login"><h1>edgeinfer</h1>
<form id="login"><label>Bearer token (<code>http.token</code>)
<input id="token" type="password" autocomplete="current-password" autofocus></label>
<button>Open</button><p id="why" class="bad"></p></form></main>
<script>
async function open_with(token) {
  const answer = await fetch("/", {headers: {Authorization: "Bearer " + token}});
  if (answer.status !== 200) {
    sessionStorage.removeItem("edgeinfer-token");
    document.getElementById("why").textContent = "refused: " + answer.status;
    return;
  }
  sessionStorage.setItem("edgeinfer-token", token);
  const page = await answer.text();
  document.open(); document.write(page); document.close();
}
document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  open_with(document.getElementById("token").value);
});
const kept = sessionStorage.getItem("edgeinfer-token");
if (kept) open_with(kept);
</script></body></html>
"""
