"""Run the README's "Try it without hardware" commands exactly as printed, as a new user would.

    python -m tests.support.readme_trial HOME_DIR REPORT.json

A plain shell (PATH without the venv, no PARCELBOX_* variables, HOME pointing at HOME_DIR), the
repository folder as the working directory. The first command (`make demo`) runs in the background like
a terminal of its own; the rest run one after the other and must exit 0. Then every command the
gateway's banner lists under "next:" is run as printed too (`<name>` filled in). Finally Ctrl-C
(SIGINT to the process group, as a terminal sends it) stops the gateway. The report is JSON.

The test runs this inside its own network namespace (`unshare -rn`), so the README's fixed ports
(1883, 8080) are free and nothing else on the machine is reached.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_trial_commands(readme: str) -> list[str]:
    """The command lines of the first ```sh block after the "Try it without hardware" heading."""
    section = readme.split("## Try it without hardware", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        cmd = re.sub(r"\s+#.*$", "", line).strip()  # drop the "# terminal 1: ..." comments
        if cmd:
            out.append(cmd)
    return out


def banner_commands(log: str) -> list[str]:
    """The commands the gateway printed under "next:" (each followed by 3+ spaces and what it does)."""
    after = log.split("  next:\n", 1)[1]
    out = []
    for line in after.splitlines():
        if not line.startswith("    ") or "Ctrl-C" in line:
            break
        out.append(re.split(r"\s{3,}", line.strip())[0])
    return out


def main(home: str, report_path: str) -> int:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "dumb",
    }
    readme = (ROOT / "README.md").read_text()
    cmds = readme_trial_commands(readme)
    report: dict = {"readme": cmds, "runs": [], "banner": []}
    log_path = Path(home) / "terminal-1.log"
    with open(log_path, "wb") as log_file:
        gw = subprocess.Popen(
            cmds[0],
            shell=True,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "  next:\n" not in log_path.read_text(errors="replace"):
            if gw.poll() is not None or time.monotonic() > deadline:
                report["error"] = f"no banner (exit {gw.poll()})"
                report["log"] = log_path.read_text(errors="replace")
                Path(report_path).write_text(json.dumps(report))
                return 1
            time.sleep(0.1)
        time.sleep(0.5)  # the rest of the banner
        banner = banner_commands(log_path.read_text(errors="replace"))
        report["banner"] = banner
        for cmd in cmds[1:] + [c.replace("<name>", "box-7") for c in banner]:
            r = subprocess.run(
                cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
            )
            report["runs"].append(
                {"cmd": cmd, "rc": r.returncode, "out": r.stdout[-3000:], "err": r.stderr[-3000:]}
            )
    finally:
        if gw.poll() is None:
            os.killpg(gw.pid, signal.SIGINT)  # Ctrl-C in terminal 1
            try:
                gw.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(gw.pid, signal.SIGKILL)
                gw.wait()
        report["gateway_rc"] = gw.returncode
        report["log"] = log_path.read_text(errors="replace")
    Path(report_path).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
