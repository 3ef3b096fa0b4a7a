"""The grounded teacher on real Loghub chunks: every figure it states is recounted here from the chunk text."""

import json
import re

import pytest
from conftest import LOGHUB, loghub_file

from loganalyzer import grounded_teacher as g
from loganalyzer.chunk import ChunkConfig
from loganalyzer.chunk import run as chunk
from loganalyzer.io import read_jsonl

SYSTEMS = ["HDFS", "OpenSSH", "Linux", "Apache", "BGL", "Zookeeper", "Hadoop", "Spark", "Thunderbird", "Proxifier",
           "HealthApp", "Mac", "OpenStack", "HPC"]


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    logs = [str(loghub_file(s)) for s in SYSTEMS if (LOGHUB / s).is_dir() or s in ("HDFS", "OpenSSH", "Linux",
                                                                                     "Apache")]
    out = tmp_path_factory.mktemp("gt") / "chunks.jsonl"
    chunk(ChunkConfig(logs=logs, out=str(out), min_lines=20, max_lines=60, max_chunks_per_file=3))
    return list(read_jsonl(out))


def _lines(content):
    return [ln for ln in content.split("\n") if ln.strip()]


def _template_regex(template):
    """A Drain template as a regex over a whole message: literal tokens, ``<*>`` = one token, a token holding a mask
    (``<IP>``, ``/<IP>``) = that token with the mask as any non-space run."""
    tokens = []
    for tok in template.split():
        if tok == "<*>":
            tokens.append(r"\S+")
        else:
            parts = re.split(r"<[A-Z*]+>", tok)
            tokens.append(r"\S+?".join(map(re.escape, parts)) if len(parts) > 1 else re.escape(tok))
    return re.compile(r"\s+".join(tokens))


def _message(line):
    ts = g.find_timestamp(line)
    return (line[:ts[1]] + " " + line[ts[2]:]).strip() if ts else line


def _count_template(template, lines):
    rx = _template_regex(template)
    return sum(1 for ln in lines if rx.fullmatch(_message(ln)))


def _lines_with(value, lines):
    rx = re.compile(r"(?<![\w.])" + re.escape(value) + r"(?![\w])")
    return sum(1 for ln in lines if rx.search(ln))


def _check_figures(answer, content):
    """Recount every figure of the answer's known phrases; return the numbers so verified."""
    lines = _lines(content)
    verified = {len(lines)}
    for tpl, count in re.findall(r"`([^`]+)`:? \(?(\d+) lines?", answer):  # "`T`: N lines" / "`T` (N lines)"
        if "<" in tpl or tpl in (ln for ln in lines):
            if not any(tpl == ln for ln in lines):
                # Drain's templates partition the lines (checked below); a line of a more specific template may
                # fit a general one as well, so the pattern fits at least the stated lines.
                assert _count_template(tpl, lines) >= int(count) > 0, (tpl, count)
            verified.add(int(count))
    for number, text in re.findall(r"line (\d+): `([^`]+)`", answer):
        assert lines[int(number) - 1] == text
        verified.add(int(number))
    for tpl, first, last in re.findall(r"`([^`]+)`: \d+ lines?, first at line (\d+)[^\n]*?(?:last at line (\d+))?$",
                                       answer, re.M):
        for number in filter(None, (first, last)):  # a problem line of that template
            assert _template_regex(tpl).fullmatch(_message(lines[int(number) - 1])), (tpl, number)
            verified.add(int(number))
    prose = re.sub(r"`[^`]*`", "``", answer)  # the answer without its quoted lines and templates
    for level, count in re.findall(r"\b(EMERGENCY|ALERT|CRITICAL|FATAL|SEVERE|ERROR|WARNING|NOTICE|INFO|DEBUG|TRACE)"
                                   r" (\d+)\b", prose):
        words = {"WARNING": ("WARNING", "WARN", "[warn]"), "ERROR": ("ERROR", "[error]"),
                 "NOTICE": ("NOTICE", "[notice]")}.get(level, (level,))
        def recount(part, words=words):
            return sum(1 for ln in part if any(re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", ln)
                                               for w in words))

        h = len(lines) // 2  # compare_halves states each half's counts
        assert int(count) in (recount(lines), recount(lines[:h]), recount(lines[h:])), (level, count)
        verified.add(int(count))
    for value, count in re.findall(r"([\w./:-]+) \((\d+) lines?\)", answer):
        if value in content and not value.endswith(":"):
            recount = _lines_with(value, lines)
            # IPs, block ids, paths: every line holding the value; a user, host or component name may also
            # occur in other roles (a path, a message), so it is on at least that many lines.
            exact = re.fullmatch(r"[\d.]+|blk_-?\d+|/.*", value)
            assert recount == int(count) if exact else recount >= int(count) > 0, (value, count, recount)
            verified.add(int(count))
    m = re.search(r"(\d+) lines? report a problem", answer)
    if m:
        strong = sum(1 for ln in lines if re.search(r"(?i)error|fail|exception|denied|refused|invalid|WARN|FATAL", ln))
        assert int(m.group(1)) >= min(strong, 1) and int(m.group(1)) <= len(lines)
        verified.add(int(m.group(1)))
    stamps = [ts[0] for ln in lines if (ts := g.find_timestamp(ln))]
    m = re.search(r" from (.+?) to (.+?)(?: \(\d|, with|\.$|\. Second)", prose)
    if m and stamps:
        assert (m.group(1), m.group(2)) in {(a, b) for a in stamps for b in stamps}, m.groups()
    return verified


@pytest.mark.parametrize("task", list(g.TEXT_ANSWERS))
def test_every_stated_figure_is_true_of_the_chunk(chunks, task):
    assert len({c["system"] for c in chunks}) >= 4
    for c in chunks:
        answer = g.reply(task, c["content"], c["system"], c["id"])
        verified = _check_figures(answer, c["content"])
        # Every other number is inside a quoted line/template/value, a timestamp, a duration or a line range.
        bare = answer
        for stamp in sorted({ts[0] for ln in _lines(c["content"]) if (ts := g.find_timestamp(ln))}, key=len,
                            reverse=True):
            bare = bare.replace(stamp, " ")
        bare = re.sub(r"`[^`]*`|\([^()]*\b(?:seconds?|minutes?|hours?|days?)\)", " ", bare)
        bare = re.sub(r"[\w./:-]*[A-Za-z_/.:-][\w./:-]*\d[\w./:-]*|\d+[\w./:-]*[A-Za-z_/:][\w./:-]*", " ", bare)
        p = g.profile(c["content"])
        ranges = {len(p.lines) // 2, len(p.lines) // 2 + 1, 1}
        for number in map(int, re.findall(r"(?<![\w.])\d+(?![\w.])", bare)):
            assert number in verified | ranges or re.search(rf"\b{number}%", answer) or \
                re.search(rf"(?:went from|from) {number} to|to {number} lines|{number} (?:other )?templates?|"
                          rf"{number} (?:IP|host|user|block|file|event|line|time|in the)", answer), \
                (task, c["system"], number, answer)


def test_template_counts_cover_every_line(chunks):
    for c in chunks:
        p = g.profile(c["content"])
        assert sum(t.count for t in p.templates.values()) == p.n == len(_lines(c["content"]))
        for t in p.templates.values():  # Drain's final template matches each of its lines (recounted independently)
            assert all(_template_regex(t.text).fullmatch(p.lines[i - 1].message) for i in t.lines), t.text


def test_known_facts_of_a_real_apache_chunk():
    lines = loghub_file("Apache").read_text(encoding="utf-8").splitlines()[:30]
    text = "\n".join(lines)
    summary = g.reply("summarize", text, "Apache")
    assert summary.startswith("This is an Apache log of 30 lines from Sun Dec 04 04:47:44 2005 to "
                              f"{lines[-1][1:25]} (")
    errors = sum("[error]" in ln for ln in lines)
    assert f"ERROR {errors}" in summary and f"{errors} lines report a problem" in summary
    cause = g.reply("root_cause", text, "Apache")
    first_error = next(i for i, ln in enumerate(lines, 1) if "[error]" in ln)
    assert f"The earliest problem is line {first_error}: `{lines[first_error - 1]}`" in cause


def test_log_without_timestamps_and_one_template():
    text = "\n".join(f"worker {i} finished job" for i in range(12))
    summary = g.reply("summarize", text, "custom")
    assert "This is a custom log of 12 lines, with no severity level." in summary
    assert "Drain finds 1 event template; the most frequent is:\n- `worker <*> finished job`: 12 lines" in summary
    assert "No line reports an error" in summary
    assert "There is no failure to explain" in g.reply("root_cause", text, "custom") or \
        "no failure to explain" in g.reply("root_cause", text, "custom")
    halves = g.reply("compare_halves", text, "custom")
    assert "First half: lines 1-6. Second half: lines 7-12." in halves and "same events with the same counts" in halves
    (when,) = [m["content"] for m in json.loads(g.reply("conversation", text, "custom", turns=14))["messages"]
               if m["content"].startswith("I find no timestamp")]
    assert when


def test_conversation_and_nlplog_records_pass_synthesize_validation(chunks):
    from loganalyzer.synthesize import SynthesizeConfig, validate_reply

    cfg = SynthesizeConfig(chunks="x", out="y")
    for c in chunks[:6]:
        msgs = validate_reply("conversation", g.reply("conversation", c["content"], c["system"], c["id"]), c, cfg)
        assert len(msgs) == 10 and msgs[0]["content"] == g.FIRST_QUESTION
        recs = validate_reply("nlplog_qa", g.reply("nlplog_qa", c["content"], c["system"], c["id"], items=3), c, cfg)
        p = g.profile(c["content"])
        assert len(recs) == min(3, len(p.templates))
        for r in recs:
            count = int(re.search(r"seen (\d+) times?", r["output"]).group(1))
            tpl = re.search(r"template `([^`]+)`", r["output"]).group(1)
            assert _count_template(tpl, _lines(c["content"])) >= count == p.templates[
                next(k for k, t in p.templates.items() if t.text == tpl)].count


def test_timestamps_of_each_format():
    cases = {"081109 203615 148 INFO dfs.DataNode: x": ("081109 203615", "2008-11-09 20:36:15"),
             "Dec 10 06:55:46 LabSZ sshd[24200]: x": ("Dec 10 06:55:46", "2000-12-10 06:55:46"),
             "[Sun Dec 04 04:47:44 2005] [notice] x": ("Sun Dec 04 04:47:44 2005", "2005-12-04 04:47:44"),
             "2015-10-18 18:01:47,978 INFO [main] x": ("2015-10-18 18:01:47,978", "2015-10-18 18:01:47.978000"),
             "17/06/09 20:10:40 INFO executor.X: y": ("17/06/09 20:10:40", "2017-06-09 20:10:40"),
             "20171223-22:15:29:606|Step_LSC|1|x": ("20171223-22:15:29:606", "2017-12-23 22:15:29.606000"),
             "[10.30 16:49:06] chrome.exe - x": ("10.30 16:49:06", "2000-10-30 16:49:06"),
             "- 1117838570 2005.06.03 R02 2005-06-03-15.42.50.675872 R02 RAS": ("2005-06-03-15.42.50.675872",
                                                                              "2005-06-03 15:42:50.675872"),
             "134681 node-246 unix.hw state 1077804742 1 x": ("1077804742", "2004-02-26 14:12:22")}
    for line, (raw, parsed) in cases.items():
        found = g.find_timestamp(line)
        assert found and found[0] == raw and str(found[3]) == parsed, line
    assert g.find_timestamp("no time here 12:00") is None


def test_review_regressions_timestamps_blank_lines_ips_and_users():
    # a syslog line that ends with another date: the leading timestamp is the line's
    line = "Jun 20 03:40:59 combo ftpd[8829]: connection from 1.2.3.4 () at Mon Jun 20 03:40:59 2005"
    assert g.find_timestamp(line)[0] == "Jun 20 03:40:59"
    text = "Jun 18 04:12:43 combo su: session opened\n" + line
    assert "from Jun 18 04:12:43 to Jun 20 03:40:59 (1 day 23 hours)" in g.reply("summarize", text, "Linux")
    # mixed formats: no duration between them
    assert "(" not in g._span(g.profile("Jun 18 04:12:43 a b\n2005-06-20 03:40:59 c d").lines)
    # blank lines keep the line numbers of the chunk
    blanky = "a ok\n\n\nb failed here"
    summary = g.reply("summarize", blanky, "x")
    assert "log of 2 lines (and 2 blank)" in summary and "line 4: `b failed here`" in summary
    # an IP that ends a sentence; "Invalid user" at the start of a message
    ssh = ("Dec 10 06:55:46 LabSZ sshd[1]: Invalid user admin from 1.2.3.4\n"
           "Dec 10 06:55:47 LabSZ sshd[1]: Connection closed by 1.2.3.4.\n"
           "Dec 10 06:55:48 LabSZ sshd[1]: input_userauth_request: invalid user admin [preauth]")
    p = g.profile(ssh)
    assert p.entities["ip"]["1.2.3.4"] == 2 and p.entities["user"]["admin"] == 2


@pytest.mark.parametrize("content", ["", "   \n\n", "\x00\x01\x02binary\x00", "\x01\x02\x03\x04\x05" * 40])
def test_empty_or_binary_input_is_a_clear_error(content):
    with pytest.raises(ValueError, match="empty chunk|not text"):
        g.reply("summarize", content, "x")


def test_synthesize_with_the_grounded_teacher_records_what_ran(tmp_path):
    from loganalyzer.synthesize import SynthesizeConfig, run

    path = tmp_path / "chunks.jsonl"
    chunk(ChunkConfig(logs=[str(loghub_file("OpenSSH"))], out=str(path), max_chunks_per_file=2))
    bad = {"id": "bad-1", "system": "x", "content": "\x00\x00\x00"}
    with open(path, "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    summary = run(SynthesizeConfig(chunks=str(path), out=str(tmp_path / "s"), teacher="grounded",
                                   model="gpt-4o-mini"))
    assert summary["teacher"] == "grounded" and summary["model"] == g.NAME and summary["base_url"] == ""
    assert summary["accepted"] == 2 * 6 and summary["rejected"] == 6
    rejects = list(read_jsonl(tmp_path / "s" / "rejects.jsonl"))
    assert {r["chunk_id"] for r in rejects} == {"bad-1"} and all("not text" in r["reason"] for r in rejects)
    records = list(read_jsonl(tmp_path / "s" / "records.jsonl"))
    assert {r["model"] for r in records} == {g.NAME}
    again = run(SynthesizeConfig(chunks=str(path), out=str(tmp_path / "s"), teacher="grounded"))
    assert again["skipped_done"] == 12 and again["asked"] == 6  # resumable like the LLM path
