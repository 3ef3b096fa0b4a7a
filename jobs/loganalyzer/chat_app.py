"""The chatbot page (``streamlit run``; started by ``loganalyzer chat``). The logic lives in ``loganalyzer.chat``.

Settings arrive as ``key=value`` arguments after ``--`` (see ``chat.streamlit_command``); the sidebar can change
the endpoint, model and API key at any time without losing the conversation.
"""

from __future__ import annotations

import sys

import streamlit as st

from loganalyzer.chat import BUTTONS, Chat, ChatConfig, ChatError, read_log
from loganalyzer.config import parse_config
from loganalyzer.redact import REDACT_MODE_HELP

st.set_page_config(page_title="loganalyzer", page_icon=":mag:", layout="wide")


def _config() -> ChatConfig:
    if "cfg" not in st.session_state:
        st.session_state.cfg = parse_config(ChatConfig, "chat", sys.argv[1:])
    return st.session_state.cfg


def _chat(cfg: ChatConfig, api_key: str) -> Chat:
    """The session's Chat; rebuilt (keeping the conversation) when the sidebar changes the connection."""
    key = (cfg.endpoint, cfg.model, api_key)
    chat = st.session_state.get("chat")
    if chat is None or st.session_state.get("chat_key") != key:
        new = Chat(cfg, api_key=api_key or None)
        if chat is not None:
            new.adopt(chat)
        st.session_state.chat, st.session_state.chat_key = new, key
    return st.session_state.chat


cfg = _config()
with st.sidebar:
    st.header("Model endpoint")
    endpoint = st.text_input("Endpoint (OpenAI-compatible, …/v1)", value=cfg.endpoint, key="endpoint")
    model = st.text_input("Model (empty: the first one the endpoint lists)", value=cfg.model, key="model")
    api_key = st.text_input("API key (optional)", type="password", key="api_key")
    cfg = cfg.model_copy(update={"endpoint": endpoint.strip(), "model": model.strip()})
    chat = _chat(cfg, api_key)
    st.caption("Redaction: " + ("on: secrets are removed and IPs, e-mails and card numbers pseudonymised before "
                                "anything is sent" if chat.redacting else
                                f"off ({cfg.redact}): the log is sent as it is"),
               help=REDACT_MODE_HELP + " (set redact=on or redact=off when starting the app)")
    if st.button("New Chat", key="new_chat", use_container_width=True):
        chat.new_chat()
        st.session_state.pop("pasted", None)
        st.session_state.uploader_gen = st.session_state.get("uploader_gen", 0) + 1
    st.download_button("Download conversation (.md)", chat.to_markdown(), file_name="loganalyzer-conversation.md",
                       mime="text/markdown", key="download", disabled=not chat.turns, use_container_width=True)

st.title("loganalyzer")
st.caption("Paste or upload a log, then ask: the log goes to the model after “Log content:”, as in training.")
problem = chat.endpoint_problem()  # checked on every rerun until it answers
if problem:
    st.error(f"The model endpoint does not answer: {problem}. Fix it in the sidebar, or wait if it is still "
             "starting.", icon=":material/cloud_off:")
    st.button("Check again", key="check_endpoint")

# -- the log ----------------------------------------------------------------------------------------------------
if not chat.messages:  # the log can change until the first question is sent
    pasted = st.text_area("Paste a log", height=180, key="pasted")
    upload = st.file_uploader("…or upload one (.log, .txt, .gz)", type=["log", "txt", "gz"],
                              key=f"upload-{st.session_state.get('uploader_gen', 0)}")
    try:
        if upload is not None:
            chat.set_log(read_log(upload.name, upload.getvalue(), cfg.max_log_mb))
        else:
            chat.set_log(read_log("pasted log", pasted.encode(), cfg.max_log_mb))
    except ChatError as exc:
        chat.set_log("")
        st.error(str(exc))
if chat.log_text:
    lines, tokens = chat.log_text.count("\n") + 1, chat.count(chat.log_text)
    fits = tokens <= chat.log_budget
    st.info(f"Log: {lines:,} lines, {'≈' if not chat.count.exact else ''}{tokens:,} tokens"
            + ("" if fits else f" — more than the {chat.log_budget:,} that fit in one request: it will be analysed "
                               f"in parts and the answers merged."))

# -- the conversation -------------------------------------------------------------------------------------------
for turn in chat.turns:
    with st.chat_message("user"):
        st.markdown(turn.user)
    if turn.reply or turn.error or turn.notice:
        with st.chat_message("assistant"):
            if turn.redacted:
                st.info(turn.redacted, icon=":material/shield:")
            if turn.notice:
                st.warning(turn.notice)
            if turn.reply:
                st.markdown(turn.reply)
                st.caption(f"answered by {turn.model} at {turn.endpoint}")
            if turn.error:
                st.error(turn.error)

pending = None
last = chat.turns[-1] if chat.turns else None
if last is not None and last.error:
    if st.button("Retry", key="retry", type="primary"):
        pending = last

cols = st.columns(len(BUTTONS))
for col, (task, label) in zip(cols, BUTTONS.items(), strict=True):
    if col.button(label, key=f"task-{task}", use_container_width=True, disabled=not chat.log_text):
        pending = chat.ask(task=task)
question = st.chat_input("Ask about the log")
if question:
    pending = chat.ask(text=question)

if pending is not None:
    if pending is not last:
        with st.chat_message("user"):
            st.markdown(pending.user)
    with st.chat_message("assistant"):
        try:
            st.write_stream(chat.reply_stream(pending))
            if pending.redacted:
                st.info(pending.redacted, icon=":material/shield:")
            if pending.notice:
                st.warning(pending.notice)
            st.caption(f"answered by {pending.model} at {pending.endpoint}")
        except ChatError as exc:
            pending.error = str(exc)
            st.error(pending.error)
    st.rerun()
