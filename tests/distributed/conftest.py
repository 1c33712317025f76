"""Reports the multi-host runs that were retried after a hang (test_multihost.py: at most
one retry of a run that hit a time limit), at the end of the session, passed or not."""


def pytest_terminal_summary(terminalreporter):
    retried = [(report.nodeid, value)
               for reports in terminalreporter.stats.values() for report in reports
               if getattr(report, "when", None) == "call"
               for name, value in getattr(report, "user_properties", ()) if name == "netns_retry"]
    if not retried:
        return
    terminalreporter.section("multi-host runs RETRIED after a hang", sep="!", red=True, bold=True)
    for nodeid, text in retried:
        terminalreporter.write_line(f"{nodeid}: retried once: {text}", red=True)
