"""An sslyze scan of a loopback bridge: no protocol below TLS 1.2 and no weak cipher suite.

    python -m bench.tls_scan [--venv /tmp/sslyze-venv] [--keep-json PATH]

sslyze pins its own (older) cryptography and nassl, so it lives in a venv of its own, made on
first use (`python -m venv` + `pip install sslyze`; about 15 s with a warm pip cache). The bridge
under test is `serial-bridge demo --port 0` run by this interpreter (127.0.0.1 only). Exit status
0 when every check passes, 1 otherwise; the findings and the time taken are printed.

Checks: SSL 2.0/3.0 and TLS 1.0/1.1 accept no cipher suite; TLS 1.2 accepts only ECDHE suites
with AES-GCM or ChaCha20-Poly1305 (Mozilla "intermediate"); TLS 1.3 works; no client-initiated
or insecure renegotiation; no TLS compression; not vulnerable to Heartbleed, the OpenSSL CCS
injection or ROBOT; downgrade protection (TLS_FALLBACK_SCSV) is supported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OLD_PROTOCOLS = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")
STRONG_TLS12 = re.compile(
    r"^TLS_ECDHE_(ECDSA|RSA)_WITH_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$"
)
SCANS = [
    *("--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"),
    *("--reneg", "--compression", "--heartbleed", "--openssl_ccs", "--robot", "--fallback"),
    *("--mozilla_config", "disable"),
]


def ensure_sslyze(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import sslyze"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "sslyze"], check=True)
    return python


def start_demo() -> tuple[subprocess.Popen[str], str]:
    """`serial-bridge demo --port 0`; returns the process and its host:port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"https://(127\.0\.0\.1:\d+)/", line):
            return proc, m.group(1)
    stop(proc)
    raise SystemExit("tls_scan: the demo bridge did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _accepted(result: dict[str, Any], name: str) -> list[str]:
    scan = result["scan_result"][f"{name}_cipher_suites"]
    if scan["status"] != "COMPLETED":
        raise ValueError(f"{name}: scan {scan['status']}: {scan.get('error_reason')}")
    return [c["cipher_suite"]["name"] for c in scan["result"]["accepted_cipher_suites"]]


def _result(result: dict[str, Any], name: str) -> dict[str, Any]:
    scan = result["scan_result"][name]
    if scan["status"] != "COMPLETED":
        raise ValueError(f"{name}: scan {scan['status']}: {scan.get('error_reason')}")
    return dict(scan["result"])


def evaluate(report: dict[str, Any]) -> list[str]:
    """Problems found in an sslyze JSON report (empty: all good)."""
    (result,) = report["server_scan_results"]
    if result["scan_status"] != "COMPLETED":
        return [f"scan did not complete: {result.get('connectivity_error_trace')}"]
    problems = []
    for name in OLD_PROTOCOLS:
        if accepted := _accepted(result, name):
            problems.append(f"{name} accepted: {', '.join(accepted)}")
    weak = [c for c in _accepted(result, "tls_1_2") if not STRONG_TLS12.match(c)]
    if weak:
        problems.append(f"weak TLS 1.2 suites: {', '.join(weak)}")
    if not _accepted(result, "tls_1_3"):
        problems.append("TLS 1.3 not offered")
    reneg = _result(result, "session_renegotiation")
    if (
        reneg["is_vulnerable_to_client_renegotiation_dos"]
        or not reneg["supports_secure_renegotiation"]
    ):
        problems.append(f"renegotiation: {reneg}")
    if _result(result, "tls_compression")["supports_compression"]:
        problems.append("TLS compression supported")
    if _result(result, "heartbleed")["is_vulnerable_to_heartbleed"]:
        problems.append("Heartbleed")
    if _result(result, "openssl_ccs_injection")["is_vulnerable_to_ccs_injection"]:
        problems.append("OpenSSL CCS injection")
    robot = _result(result, "robot")["robot_result"]
    if "VULNERABLE" in robot and "NOT_VULNERABLE" not in robot:
        problems.append(f"ROBOT: {robot}")
    if not _result(result, "tls_fallback_scsv")["supports_fallback_scsv"]:
        problems.append("no TLS_FALLBACK_SCSV downgrade protection")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "sslyze-venv")
    parser.add_argument("--keep-json", type=Path, default=None, help="save sslyze's JSON here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    python = ensure_sslyze(args.venv)
    ready = time.monotonic()
    proc, target = start_demo()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "sslyze.json"
            scan = subprocess.run(
                [str(python), "-m", "sslyze", "--quiet", f"--json_out={out}", *SCANS, target],
                check=False,
                timeout=600,
                capture_output=True,
                text=True,
            )
            if not out.exists():
                print(scan.stdout, scan.stderr, file=sys.stderr)
                raise SystemExit("tls_scan: sslyze wrote no report")
            report = json.loads(out.read_text())
            if args.keep_json:
                args.keep_json.write_text(json.dumps(report, indent=1))
    finally:
        stop(proc)
    problems = evaluate(report)
    (result,) = report["server_scan_results"]
    tls12 = _accepted(result, "tls_1_2")
    tls13 = _accepted(result, "tls_1_3")
    print(f"sslyze against {target}:")
    print(f"  TLS 1.2 suites: {', '.join(tls12)}")
    print(f"  TLS 1.3 suites: {', '.join(tls13)}")
    print(
        f"  took {time.monotonic() - started:.1f} s "
        f"(venv {ready - started:.1f} s, scan {time.monotonic() - ready:.1f} s)"
    )
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    print("  OK: no TLS < 1.2, no weak cipher" if not problems else "  FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
