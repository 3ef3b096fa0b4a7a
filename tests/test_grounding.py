"""Grounding metrics: what counts as a specific, on real Loghub lines, and hand-checked precision and recall."""

import math

import numpy as np
from conftest import loghub_file

from loganalyzer.grounding import paired, per_sample, sample_scores, specifics, summarize


def _lines(system: str, n: int) -> str:
    return "\n".join(loghub_file(system).read_text().splitlines()[:n])


def test_specifics_of_real_loghub_lines():
    ssh = specifics(_lines("OpenSSH", 5))
    assert {("ip", "173.234.31.186"), ("pid", "24200"), ("user", "webmaster"),
            ("timestamp", "Dec 10 06:55:46")} <= ssh
    hdfs = specifics(_lines("HDFS", 3))
    assert {("block", "blk_38865049064139660"), ("block", "blk_-6952295868487656571"), ("ip", "10.251.73.220"),
            ("timestamp", "081109 203615")} <= hdfs
    assert ("count", "50010") not in hdfs and ("count", "10") not in hdfs  # ports and octets are not counts
    linux = specifics(_lines("Linux", 3))
    assert {("pid", "19937"), ("pid", "19939"), ("user", "unknown"), ("ip", "218.188.2.4")} <= linux
    apache = specifics(_lines("Apache", 3))
    assert ("path", "/etc/httpd/conf/workers2.properties") in apache
    answer = ("23 failed logins for user Root from 173.234.31.186 (sshd[24200]) between 06:55:46 and 07:08:30; "
              "blk_-1608999687919862906 went to /mnt/hadoop/dfs/data. java.io.IOException on node-12, pid 4711, "
              "code 0x1f, on the 3rd attempt.")
    assert specifics(answer) == {
        ("count", "23"), ("user", "root"), ("ip", "173.234.31.186"), ("pid", "24200"), ("timestamp", "06:55:46"),
        ("timestamp", "07:08:30"), ("block", "blk_-1608999687919862906"), ("path", "/mnt/hadoop/dfs/data"),
        ("code", "IOException"), ("host", "node-12"), ("pid", "4711"), ("code", "0x1f")}
    assert specifics("999.1.2.3 is not an address; v1.2 is a version") == set()


def test_precision_against_the_log_and_recall_against_the_reference():
    log = _lines("OpenSSH", 5)  # 173.234.31.186, sshd[24200], webmaster, Dec 10 06:55:46 ...
    reference = "Failed logins for webmaster from 173.234.31.186, 5 attempts."
    grounded = "5 attempts for webmaster from 173.234.31.186 (sshd[24200])."
    # 3 checkable specifics (user, ip, pid), all in the log; the reference's 3 (user, ip, count 5) all stated
    assert sample_scores(grounded, reference, log) == (1.0, 1.0)
    invented = "Logins for admin from 10.9.9.9 and 173.234.31.186."
    # stated: user admin (not in the log), 10.9.9.9 (not), 173.234.31.186 (in) -> 1/3; recall: the ip only, 1/3
    p, r = sample_scores(invented, reference, log)
    assert math.isclose(p, 1 / 3) and math.isclose(r, 1 / 3)
    p, r = sample_scores("Nothing specific here.", "Also nothing.", log)
    assert math.isnan(p) and math.isnan(r)


def test_summaries_and_paired_comparison_skip_undefined_samples():
    a = per_sample(["from 1.1.1.1", "from 2.2.2.2", "no details"], ["1.1.1.1", "2.2.2.2", "none"],
                   ["1.1.1.1", "9.9.9.9", "x"])
    np.testing.assert_equal(a["entity_precision"], [1.0, 0.0, np.nan])
    s = summarize(a, n_boot=200)
    assert s["entity_precision"] == 0.5 and s["entity_precision_n"] == 2 and s["entity_recall_n"] == 2
    assert s["entity_precision_ci95"][0] <= 0.5 <= s["entity_precision_ci95"][1]
    b = per_sample(["from 1.1.1.1", "from 9.9.9.9", "from 3.3.3.3"], ["1.1.1.1", "2.2.2.2", "none"],
                   ["1.1.1.1", "9.9.9.9", "x"])
    d = paired(a, b, n_boot=200)
    assert d["entity_precision"]["n"] == 2 and d["entity_precision"]["delta"] == 0.5  # (1 + 1) / 2 - (1 + 0) / 2
    assert d["entity_recall"]["delta"] == -0.5 and summarize(per_sample(["x"], ["y"], ["z"]))["entity_recall"] is None
