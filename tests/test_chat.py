"""The chatbot: log reading, prompt format, token budgeting, and every page flow with Streamlit's AppTest against a
loopback OpenAI-compatible server (streaming), errors included."""

from __future__ import annotations

import gzip
import re
import time

import pytest
from conftest import loghub_file
from endpoint_helpers import BAD_ENDPOINTS, bad_endpoint

from loganalyzer.chat import APP, Chat, ChatConfig, ChatError, TokenCounter, first_user_message, read_log, split_log
from loganalyzer.prompts import load_prompts
from loganalyzer.testing.fake_openai import FakeOpenAI


def test_read_log_plain_gzip_binary_and_too_big():
    text = "line one\nline two é\n"
    assert read_log("a.log", text.encode(), 1) == text
    assert read_log("a.log.gz", gzip.compress(text.encode()), 1) == text
    assert read_log("bad.log", b"ok \xff\xfe\n", 1) == "ok \ufffd\ufffd\n"  # invalid UTF-8 is replaced, not fatal
    with pytest.raises(ChatError, match="binary"):
        read_log("x.bin", b"\x7fELF\x00\x00", 1)
    with pytest.raises(ChatError, match="not a valid gzip"):
        read_log("x.gz", b"plain", 1)
    with pytest.raises(ChatError, match="larger than the 0.001 MB limit"):
        read_log("big.log", b"x" * 2000, 0.001)
    with pytest.raises(ChatError, match="larger than"):  # the limit applies after decompression
        read_log("bomb.gz", gzip.compress(b"x" * 5000), 0.001)


def test_first_user_message_is_the_training_format():
    log = loghub_file("HDFS").read_text().splitlines()[:60]
    log = "\n".join(log)
    p = load_prompts()
    assert first_user_message("", log, "root_cause") == p.user_turn("root_cause", log)
    assert first_user_message("", log, "summarize").endswith("Please answer in detail.\n\nLog content:\n\n" + log)
    assert first_user_message("Which block failed?", log) == "Which block failed?\n\nLog content:\n\n" + log


def test_split_log_keeps_whole_lines_within_budget():
    count = TokenCounter()
    text = "".join(f"event {i:04d} happened on node-{i % 7}\n" for i in range(300))
    parts = split_log(text, count, budget=200)
    assert "".join(parts) == text and len(parts) > 1
    assert all(count(p) <= 200 for p in parts) and all(p.endswith("\n") for p in parts)
    assert split_log("short\n", count, 200) == ["short\n"]
    long_line = "x" * 5000
    assert "".join(split_log(long_line, count, 100)) == long_line


@pytest.fixture
def fake_endpoint():
    with FakeOpenAI(model="fake-served") as srv:
        yield srv


def _app(endpoint, **cfg):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["cfg"] = ChatConfig(endpoint=endpoint, **cfg)
    return at.run()


def _button(at, key):
    return next(b for b in at.button if b.key == key)


def _chunk():
    return "\n".join(loghub_file("OpenSSH").read_text().splitlines()[:80])


def test_summarize_button_streams_the_answer_with_the_training_prompt(fake_endpoint):
    at = _app(fake_endpoint.base_url)
    assert _button(at, "task-summarize").disabled  # no log yet
    log = _chunk()
    at.text_area(key="pasted").input(log).run()
    assert "80 lines" in at.info[0].value
    _button(at, "task-summarize").click().run()
    assert not at.exception
    body = fake_endpoint.bodies[-1]
    assert body["stream"] is True and body["model"] == "fake-served"  # the first model the endpoint lists
    assert body["messages"] == [{"role": "user", "content": load_prompts().user_turn("summarize", log)}]
    replies = [m for m in at.chat_message if m.name == "assistant"]
    assert len(replies) == 1 and "The log has 80 lines" in replies[0].markdown[0].value
    assert f"answered by fake-served at {fake_endpoint.base_url}" in replies[0].caption[0].value

    # a free-form follow-up carries the history; the log is not sent again
    at.chat_input[0].set_value("Which host failed most?").run()
    body = fake_endpoint.bodies[-1]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Which host failed most?"
    assert len([m for m in at.chat_message if m.name == "assistant"]) == 2
    assert not [t for t in at.text_area if t.key == "pasted"]  # the log is fixed once the conversation started


def test_free_question_first_carries_the_log_and_markdown_download(fake_endpoint):
    at = _app(fake_endpoint.base_url, model="fake-served")
    log = _chunk()
    at.text_area(key="pasted").input(log).run()
    at.chat_input[0].set_value("Why did sshd close connections?").run()
    assert fake_endpoint.bodies[-1]["messages"][0]["content"] == \
        "Why did sshd close connections?\n\nLog content:\n\n" + log
    chat = at.session_state["chat"]
    md = chat.to_markdown()
    assert md.startswith("# loganalyzer conversation") and "**You:** Why did sshd close connections?" in md
    assert f"(fake-served at {fake_endpoint.base_url})" in md and log.splitlines()[0] in md


def test_long_log_is_analysed_in_parts_with_a_notice(fake_endpoint):
    at = _app(fake_endpoint.base_url, context_tokens=2048, max_tokens=256)
    log = "\n".join(loghub_file("HDFS").read_text().splitlines()[:400])
    at.text_area(key="pasted").input(log).run()
    assert "analysed in parts" in at.info[0].value
    before = len(fake_endpoint.bodies)
    _button(at, "task-root_cause").click().run()
    assert not at.exception
    chat = at.session_state["chat"]
    n_parts = len(split_log(log, chat.count, chat.log_budget))
    assert n_parts > 1 and len(fake_endpoint.bodies) - before == n_parts + 1  # map, then one merge
    map_prompts = [b["messages"][0]["content"] for b in fake_endpoint.bodies[before:before + n_parts]]
    assert all(p.startswith(load_prompts().question("root_cause")) for p in map_prompts)
    assert "".join(p.split("Log content:\n\n", 1)[1] for p in map_prompts).strip() == log.strip()
    assert fake_endpoint.bodies[-1]["messages"][0]["content"].startswith("The log below was too long")
    assert f"analysed in {n_parts} parts" in at.warning[0].value


def test_endpoint_down_then_retry_keeps_the_conversation(fake_endpoint):
    from loganalyzer.serve import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    at = _app(dead, model="fake-served")
    # the page says so at once, before any question, with the cause
    assert [e.value for e in at.error] == [f"The model endpoint does not answer: endpoint {dead}: connection refused "
                                           "(nothing listens there); check the host and port, and that the server "
                                           "runs. Fix it in the sidebar, or wait if it is still starting."]
    at.text_area(key="pasted").input(_chunk()).run()
    _button(at, "task-find_patterns").click().run()
    assert not at.exception
    assert f"cannot reach {dead}" in at.chat_message[1].error[0].value
    assert [m.name for m in at.chat_message] == ["user", "assistant"]  # the question stays on the page
    # the user fixes the endpoint in the sidebar and retries: same request, conversation kept
    at.text_input(key="endpoint").input(fake_endpoint.base_url).run()
    _button(at, "retry").click().run()
    assert not at.error and fake_endpoint.bodies[-1]["messages"][0]["content"].startswith(
        load_prompts().question("find_patterns"))
    assert len(at.session_state["chat"].turns) == 1 and at.session_state["chat"].turns[0].reply


@pytest.mark.parametrize("cause", BAD_ENDPOINTS)
def test_chat_checks_its_endpoint_before_starting(cause, monkeypatch, capsys):
    """`loganalyzer chat` lists the endpoint's models before Streamlit starts: each cause is reported with the
    endpoint and the fix within 10 s, exit 2, and no server is started."""
    from loganalyzer import chat
    from loganalyzer.cli import entry

    monkeypatch.setattr(chat.os, "execv", lambda *a: pytest.fail(f"Streamlit started: {a}"))
    with bad_endpoint(cause) as url:
        t0 = time.monotonic()
        with pytest.raises(SystemExit) as exit_:
            entry(chat.main, ["--endpoint", url, "--model", "loganalyzer"])
        assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: --endpoint {url}: " in err and BAD_ENDPOINTS[cause] in err, err


def test_chat_starts_on_a_good_endpoint_and_when_told_not_to_check(fake_endpoint, monkeypatch):
    from loganalyzer import chat

    started = []
    monkeypatch.setattr(chat.os, "execv", lambda path, cmd: started.append(cmd))
    chat.main(["--endpoint", fake_endpoint.base_url, "--model", "fake-served"])
    with bad_endpoint("refused") as dead:
        chat.main(["--endpoint", dead, "require_endpoint=false"])  # the Deployment: its model may still load
    assert len(started) == 2 and started[1][started[1].index("--") + 1:].count(f"endpoint={dead}") == 1


def test_the_page_reports_a_bad_endpoint_until_it_comes_up():
    """The page checks the endpoint before the first question (a 401 names the key), and again on each rerun until
    it answers: a model server that comes up on that port is seen without restarting the app."""
    from loganalyzer.serve import free_port

    with bad_endpoint("401") as url:
        at = _app(url)
        assert len(at.error) == 1 and "HTTP 401, the key was refused" in at.error[0].value
    port = free_port()
    at = _app(f"http://127.0.0.1:{port}/v1")
    assert "connection refused" in at.error[0].value
    with FakeOpenAI(model="fake-served", port=port) as srv:
        _button(at, "check_endpoint").click().run()
        assert not at.error and at.session_state["chat"].model() == "fake-served"
        at.text_area(key="pasted").input(_chunk()).run()
        _button(at, "task-summarize").click().run()
        assert not at.error and srv.bodies[-1]["model"] == "fake-served"


def test_http_errors_timeouts_and_an_endpoint_without_models():
    with FakeOpenAI(schedule=[["500", "500", "500"]]) as srv:
        at = _app(srv.base_url, model="fake-teacher")
        at.text_area(key="pasted").input(_chunk()).run()
        _button(at, "task-summarize").click().run()
        assert "answered HTTP 500: internal error" in at.error[0].value
        assert _button(at, "retry")
    with FakeOpenAI(schedule=[["429", "429", "429"]], retry_after_ms=10) as srv:  # a 4xx, after the client's retry
        chat = Chat(ChatConfig(endpoint=srv.base_url, model="fake-teacher"))
        with pytest.raises(ChatError, match="answered HTTP 429: rate limited"):
            list(chat.reply_stream(chat.ask(text="hello")))
        assert chat.turns[0].user == "hello" and not chat.messages  # nothing half-recorded
    with FakeOpenAI(schedule=[["timeout", "timeout", "timeout"]], timeout_sleep_s=3) as srv:
        chat = Chat(ChatConfig(endpoint=srv.base_url, model="fake-teacher", timeout_s=0.5))
        with pytest.raises(ChatError, match=r"did not answer within 0.5 s"):
            list(chat.reply_stream(chat.ask(text="hello")))
    chat = Chat(ChatConfig(endpoint="http://127.0.0.1:9/v1"))
    chat.client.models.list = lambda: type("Page", (), {"data": []})()  # an endpoint that lists nothing
    with pytest.raises(ChatError, match="lists no models: set the model name"):
        chat.model()


def test_new_chat_clears_everything(fake_endpoint):
    at = _app(fake_endpoint.base_url)
    at.text_area(key="pasted").input(_chunk()).run()
    _button(at, "task-compare_halves").click().run()
    assert at.session_state["chat"].turns
    _button(at, "new_chat").click().run()
    chat = at.session_state["chat"]
    assert not chat.turns and not chat.messages and not chat.log_text
    assert at.text_area(key="pasted").value == ""
    assert not [m for m in at.chat_message]


def _non_loopback_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_pasted_log_is_redacted_before_it_goes_to_a_non_loopback_endpoint():
    """`redact: auto` toward an endpoint reached through a non-loopback address: the token and the client IPs
    never reach the server, a notice says what was replaced, and a follow-up question naming a host gets the
    same pseudonym as the log."""
    token = "ghp_" + "Ab3" * 12
    log = _chunk() + f"\nMar  3 10:22:01 LabSZ deploy[77]: pulled with token {token} from 10.9.8.7"
    ip = _non_loopback_ip()
    with FakeOpenAI(model="fake-served", host="0.0.0.0" if ip else "127.0.0.1") as srv:
        endpoint = f"http://{ip}:{srv.port}/v1" if ip else srv.base_url
        at = _app(endpoint, **({} if ip else {"redact": "on"}))  # no such address: force it on
        assert at.session_state["chat"].redacting
        at.text_area(key="pasted").input(log).run()
        _button(at, "task-root_cause").click().run()
        assert not at.exception
        sent = srv.bodies[-1]["messages"][0]["content"]
        raw_ips = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", log))
        assert "10.9.8.7" in raw_ips and len(raw_ips) > 1
        assert token not in sent and not [x for x in raw_ips if x in sent]
        assert "<SECRET:GITHUB_TOKEN>" in sent and "192.0.2." in sent
        assert sent.count("\n") == load_prompts().user_turn("root_cause", log).count("\n")  # line for line
        notice = next(i.value for i in at.info if "replaced before sending" in i.value)
        assert "1 GitHub token" in notice and " IPs" in notice and notice.endswith(f"sending to {endpoint}")
        pseudonym = at.session_state["chat"]._redactor.pseudonyms.mapping["IP_ADDRESS"]["10.9.8.7"]
        at.chat_input[0].set_value("What else did 10.9.8.7 do?").run()
        assert srv.bodies[-1]["messages"][-1]["content"] == f"What else did {pseudonym} do?"
        assert notice in at.session_state["chat"].to_markdown()  # the export records it too


def test_switching_to_an_external_endpoint_redacts_the_history(fake_endpoint):
    """A conversation started on loopback (sent as is) continues on an external endpoint: the history that is sent
    again with every request is redacted first."""
    local = Chat(ChatConfig(endpoint=fake_endpoint.base_url, model="fake-served"))
    assert not local.redacting
    local.set_log("Mar  3 10:22:01 host sshd[1]: Accepted password for bob from 10.1.1.1 password=hunter22\n")
    list(local.reply_stream(local.ask(task="summarize")))
    assert "10.1.1.1" in local.messages[0]["content"]
    external = Chat(ChatConfig(endpoint=fake_endpoint.base_url, model="fake-served", redact="on"))
    external.adopt(local)
    assert external.turns is local.turns and external.log_text == local.log_text
    history = "\n".join(m["content"] for m in external.messages)
    assert "10.1.1.1" not in history and "hunter22" not in history and "192.0.2.1" in history
    list(external.reply_stream(external.ask(text="and 10.1.1.1?")))
    assert fake_endpoint.bodies[-1]["messages"][-1]["content"] == "and 192.0.2.1?"
    assert "10.1.1.1" not in str(fake_endpoint.bodies[-1]["messages"])


def test_settings_reach_the_page_unchanged():
    """`loganalyzer chat` hands its settings to the Streamlit page as key=value: they parse back to the same config
    (redact=off stays the word, the entity list a list)."""
    from loganalyzer.chat import streamlit_command
    from loganalyzer.config import parse_config

    cfg = ChatConfig(endpoint="http://10.0.0.1:8000/v1", model="m", redact="off",
                     pii_entities=["IP_ADDRESS", "MAC_ADDRESS"], temperature=0.5)
    argv = streamlit_command(cfg)
    page = parse_config(ChatConfig, "chat", argv[argv.index("--") + 1:])
    assert page.model_dump(exclude={"port", "host"}) == cfg.model_dump(exclude={"port", "host"})
