"""The playground page (GET /) end to end in headless Chromium, driven by Playwright's
Python package against a real server on 127.0.0.1: type a prompt, set the controls,
generate (streamed into #output), click a character and read its attention heatmap for
every layer and head. Offline: any request that leaves the server is refused and fails the
test. Uses the system's Chromium (Debian's `chromium`, installed by .ci/run); Playwright's
own browsers are never downloaded. Skipped with the reason when either is missing."""

import os
import shutil

import pytest

from test_serve import Server, make_model  # noqa: E402  (skips without fastapi, uvicorn)

from tinygrad_char.inference.engine import attention_maps
from tinygrad_char.inference.sampling import generate_text
from tinygrad_char.inference.serve import create_app

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed "
                                   "(pip install playwright, or the dev extra)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does; "
                    f"or set CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_page_generates_streams_and_shows_attention(browser):
    model, tokenizer = make_model()
    n_new, seed = 200, 5
    expected = generate_text(model, tokenizer, "ROMEO:", n_new, temperature=0.9, top_k=20,
                             seed=seed)[0]
    server = Server(create_app(model, tokenizer, max_new_tokens_limit=300)).start()
    outside = []
    try:
        page = browser.new_page()

        def only_loopback(route):
            if route.request.url.startswith(server.url):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", only_loopback)
        page.goto(server.url + "/")
        page.fill("#prompt", "ROMEO:")
        page.fill("#temperature", "0.9")
        page.fill("#top_k", "20")
        page.fill("#top_p", "")
        page.fill("#max_new_tokens", str(n_new))
        page.fill("#seed", str(seed))
        # count the separate updates of #output: streamed text arrives in several
        page.evaluate("""() => { window.updates = 0; new MutationObserver(() => window.updates++)
                          .observe(document.getElementById('output'), {childList: true}); }""")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".includes('characters in')", timeout=60_000)
        assert page.inner_text("#output") == "ROMEO:" + expected
        assert page.evaluate("window.updates") >= 2, "the text did not stream in"
        assert "seed 5" in page.inner_text("#status")

        # click the 10th generated character: its attention over its context
        index = len("ROMEO:") + 9
        page.click(f"#output span[data-index='{index}']")
        page.wait_for_selector("#attention table")
        rows = page.query_selector_all("#attention tr.head")
        cfg = model.config
        assert len(rows) == cfg.n_layer * cfg.n_head
        context = ("ROMEO:" + expected)[max(0, index + 1 - cfg.block_size):index + 1]
        shown = [[float(td.get_attribute("data-p")) for td in row.query_selector_all("td")]
                 for row in rows]
        assert all(len(r) == len(context) for r in shown)
        maps = attention_maps(model, tokenizer, context)  # (the server is idle now)
        for i, row in enumerate(shown):
            layer, head = divmod(i, cfg.n_head)
            assert row == pytest.approx(maps["attention"][layer][head][-1], abs=1e-6)
            assert sum(row) == pytest.approx(1.0, abs=1e-3)
        page.close()
    finally:
        server.stop()
    assert not outside, f"the page asked for something outside the server: {outside}"
