"""`loganalyzer serve` with a tiny model on loopback: the `openai` client's contract (models, non-streaming and
streaming chat), and the chatbot in a real headless Chromium driven by Playwright (screenshots kept)."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, loghub_file, running_cmdline

from loganalyzer.serve import free_port, local_server, wait_healthy

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("LOGANALYZER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
STEP_MS = 90_000  # an upper bound per browser step; a 2-core CI machine under load needs far less


@pytest.fixture(scope="module")
def served(tiny_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with local_server(str(tiny_env["model"]), log_file=log) as url:
        yield url, str(tiny_env["model"])


def test_openai_client_contract(served):
    from openai import OpenAI

    url, model = served
    client = OpenAI(base_url=url, api_key="none")
    assert client.models.list().data[0].id == model  # the served model is listed first
    messages = [{"role": "user", "content": "Summarize. Please answer in detail.\n\nLog content:\n\nA\nB"}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert isinstance(full.choices[0].message.content, str) and full.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content  # greedy: the same text either way


@contextmanager
def chat_app(url: str, workdir: Path, *settings: str):
    """`loganalyzer chat` on a free port, wired to the model server at ``url``; yields (its URL, its log file)."""
    port = free_port()
    log = workdir / "chat.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "loganalyzer.chat", "--endpoint", url, "--port", str(port),
                                 *settings], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc, 120, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def browser_page(url: str, log: Path, request):
    """A headless Chromium page on the app; on failure the page's screenshot and the app's log go to ARTIFACTS."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("LOGANALYZER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} not found (apt-get install chromium)")
        pytest.skip("Debian chromium not installed")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.goto(url)
        pg.get_by_text("Paste a log").wait_for(timeout=60_000)
        def keep_evidence():
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"), full_page=True)
            shutil.copy(log, ARTIFACTS / f"{request.node.name}-chat.log")

        try:
            yield pg
        except BaseException:  # failed inside a `with browser_page(...)` block of the test itself
            keep_evidence()
            raise
        else:  # as a fixture: the test's failure is in its report
            if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
                keep_evidence()
        finally:
            browser.close()


@pytest.fixture(scope="module")
def app(served, tmp_path_factory):
    with chat_app(served[0], tmp_path_factory.mktemp("chat"), "context_tokens=1024", "max_tokens=32") as running:
        yield running


@pytest.fixture
def page(app, request):
    with browser_page(*app, request) as pg:
        yield pg


def _settled(page, timeout=STEP_MS):
    """Wait until the app's script run (and any st.rerun it asked for) is over, so the next action is not lost
    in a rerun. Streamlit marks its root element with the script state."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=timeout)


def test_browser_paste_summarize_upload_and_endpoint_down(page, tmp_path):
    chunk = "\n".join(loghub_file("OpenSSH").read_text().splitlines()[:8])
    page.get_by_label("Paste a log").fill(chunk)
    page.keyboard.press("Control+Enter")  # commit the text area
    page.get_by_text("Log: 8 lines").wait_for(timeout=STEP_MS)
    _settled(page)
    page.get_by_role("button", name="Summarize").click()
    page.get_by_text("answered by").first.wait_for(timeout=STEP_MS)
    _settled(page)
    page.screenshot(path=str(ARTIFACTS / "chat-summarize.png"), full_page=True)

    # New Chat, then upload a longer gzipped log: the page says it will be analysed in parts
    page.get_by_role("button", name="New Chat").click()
    upload = page.locator("input[type=file]")
    upload.wait_for(state="attached", timeout=STEP_MS)
    _settled(page)
    long_log = tmp_path / "hdfs.log.gz"
    long_log.write_bytes(gzip.compress("\n".join(loghub_file("HDFS").read_text().splitlines()[:300]).encode()))
    upload.set_input_files(str(long_log))
    page.get_by_text("it will be analysed in parts").wait_for(timeout=STEP_MS)
    _settled(page)
    page.screenshot(path=str(ARTIFACTS / "chat-long-log.png"), full_page=True)

    # the endpoint goes away: a clear message and a Retry button, the question stays
    dead = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = page.get_by_label("Endpoint (OpenAI-compatible, …/v1)")
    endpoint.fill(dead)
    endpoint.press("Enter")
    _settled(page)
    page.get_by_role("button", name="Find Patterns").click()
    # the app shows the error while the turn runs, then reruns to draw it from history with the Retry button
    page.get_by_role("button", name="Retry").wait_for(timeout=STEP_MS)
    assert page.get_by_text("cannot reach").first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-endpoint-down.png"), full_page=True)


@pytest.mark.real_model
def test_browser_summarize_with_a_trained_real_model(tmp_path, request):
    """The chatbot against `loganalyzer serve` with a LoRA-trained SmolLM2 answers in sentences. The README's
    screenshot is this test's, run with LOGANALYZER_TEST_CHAT_MODEL=runs/demo/models/cpt_sft after `make demo`."""
    model = os.environ.get("LOGANALYZER_TEST_CHAT_MODEL") or str(request.getfixturevalue("smollm2_sft"))
    chunk = "\n".join(loghub_file("OpenSSH").read_text().splitlines()[8:16])
    with local_server(model, log_file=tmp_path / "server.log") as url, \
            chat_app(url, tmp_path, "max_tokens=320") as running, browser_page(*running, request) as page:
        page.get_by_label("Paste a log").fill(chunk)
        page.keyboard.press("Control+Enter")
        page.get_by_text("Log: 8 lines").wait_for(timeout=STEP_MS)
        _settled(page)
        page.get_by_role("button", name="Summarize").click()
        page.get_by_text("answered by").first.wait_for(timeout=4 * STEP_MS)
        _settled(page, 4 * STEP_MS)
        page.screenshot(path=str(ARTIFACTS / "chat-summarize-real-model.png"), full_page=True)
        reply = page.locator('[data-testid="stChatMessage"]').last.inner_text()
    words = [w for w in reply.split() if w.isalpha()]
    assert len(words) >= 12 and "log" in reply.lower(), reply


def _stops_on(sig: int, cmd: list[str], health: str, port: int, log: Path,
              busy=None) -> tuple[int | None, list[str], bool]:
    """Start ``cmd``, wait for ``health``, call ``busy()`` (load it), send ``sig``: (exit status or None, its
    processes still alive, port still open) 10 s later."""
    import socket
    import time

    import psutil

    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_healthy(health, proc, 180, log)
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        if busy:
            busy()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        time.sleep(0.5)
        alive = [c for c in map(running_cmdline, family) if c]
        with socket.socket() as s:
            open_ = s.connect_ex(("127.0.0.1", port)) == 0
        return code, alive, open_
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in psutil.Process().children(recursive=True):
            if p.pid != proc.pid and "streamlit" in running_cmdline(p.pid):
                p.kill()  # what this test found; a failure above reports it


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_chat_stops_with_its_server_on_a_signal(sig, tmp_path):
    """`loganalyzer chat` is the Streamlit server (exec, same PID): SIGTERM (a pod's stop) or SIGINT ends the server,
    frees the port and leaves no process, within 10 s."""
    import signal

    from loganalyzer.testing.fake_openai import FakeOpenAI

    port = free_port()
    with FakeOpenAI(model="fake-served") as srv:
        code, alive, open_ = _stops_on(
            getattr(signal, sig), [sys.executable, "-m", "loganalyzer", "chat", "--endpoint", srv.base_url,
                                   "--port", str(port)],
            f"http://127.0.0.1:{port}/_stcore/health", port, tmp_path / "chat.log")
    log = (tmp_path / "chat.log").read_text()[-2000:]
    assert code is not None and not alive and not open_, (code, alive, open_, log)
    assert code in (0, -getattr(signal, sig), 128 + getattr(signal, sig)), log


@pytest.mark.parametrize("sig,abandoned", [("SIGTERM", 0), ("SIGINT", 0), ("SIGTERM", 4)])
def test_serve_stops_on_a_signal(sig, abandoned, tiny_env, tmp_path):
    """`loganalyzer serve` stops within 10 s and exits 128 + the signal, also with generations in flight whose clients
    gave up (they are cancelled after shutdown_timeout_s, 5 s; before, a stop waited for them: over a minute, and
    then the interpreter's exit under their threads aborted)."""
    import signal
    import threading
    import time

    from openai import APITimeoutError, OpenAI

    port, model = free_port(), str(tiny_env["model"])

    def give_up():
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=1, max_retries=0)
        with contextlib.suppress(APITimeoutError):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4000, temperature=1.0)

    def abandon():
        for _ in range(abandoned):
            threading.Thread(target=give_up, daemon=True).start()
        time.sleep(2)  # the clients time out and go; their generations go on

    code, alive, open_ = _stops_on(
        getattr(signal, sig), [sys.executable, "-m", "loganalyzer", "serve", "--model", model, "--port", str(port)],
        f"http://127.0.0.1:{port}/health", port, tmp_path / "serve.log", busy=abandon if abandoned else None)
    log = (tmp_path / "serve.log").read_text()[-2000:]
    assert code is not None and not alive and not open_, (code, alive, open_, log)
    assert code == 128 + getattr(signal, sig), log  # as a shell reports a process ended by that signal
