"""Summarise one Autobahn|Testsuite report (reports/*/index.json).

Usage: python summary.py LABEL INDEX_JSON [EXPECTED_CASES]

Prints the counts per behaviour (OK / NON-STRICT / INFORMATIONAL /
UNIMPLEMENTED / FAILED), then every case that is not plainly OK with its
behaviour, close behaviour, the close code the testee sent and the suite's
own description of the outcome. Exits 1 when any case FAILED (in the case
itself or in its closing handshake), when a case is missing from the report,
or when the report has fewer cases than EXPECTED_CASES. Runs on Python 2.7
(the suite's own interpreter) and 3.
"""
from __future__ import print_function

import io
import json
import os
import sys

ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
# Close behaviours that mean the closing handshake itself was wrong.
CLOSE_FAILURES = ("FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT")


def case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def main():
    label, index_path = sys.argv[1], sys.argv[2]
    expected = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    with io.open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    failed = False
    if not index:
        print("%s: the report holds no agent" % label)
        return 1
    for agent, cases in sorted(index.items()):
        counts = dict((name, 0) for name in ORDER)
        for result in cases.values():
            counts[result["behavior"]] = counts.get(result["behavior"], 0) + 1
        names = ORDER + sorted(set(counts) - set(ORDER))
        print("%s (agent %s): %d cases: %s" % (
            label, agent, len(cases),
            ", ".join("%s %d" % (name, counts[name]) for name in names)))
        if len(cases) < expected:
            print("  only %d of %d cases ran" % (len(cases), expected))
            failed = True
        for case_id in sorted(cases, key=case_key):
            result = cases[case_id]
            behavior, close = result["behavior"], result["behaviorClose"]
            if behavior == "OK" and close == "OK":
                continue
            if behavior == "FAILED" or close in CLOSE_FAILURES:
                failed = True
            detail = ""
            report = os.path.join(os.path.dirname(index_path), result["reportfile"])
            try:
                with io.open(report, encoding="utf-8") as f:
                    detail = json.load(f).get("result", "")
            except (IOError, OSError, ValueError):
                pass
            print("  %-8s %-13s close %-13s code %-5s %4d ms  %s" % (
                case_id, behavior, close, result.get("remoteCloseCode"),
                result.get("duration", 0), detail))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
