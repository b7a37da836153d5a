"""The sslyze report evaluation of bench/tls_scan.py flags what it must (the scan itself needs its
own venv and runs outside the suite: `python -m bench.tls_scan`)."""

from __future__ import annotations

from typing import Any

from bench.tls_scan import evaluate

GOOD_12 = ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]


def _done(result: dict[str, Any]) -> dict[str, Any]:
    return {"status": "COMPLETED", "error_reason": None, "result": result}


def _suites(names: list[str]) -> dict[str, Any]:
    return _done({"accepted_cipher_suites": [{"cipher_suite": {"name": n}} for n in names]})


def report(**changes: Any) -> dict[str, Any]:
    scans: dict[str, Any] = {
        "ssl_2_0_cipher_suites": _suites([]),
        "ssl_3_0_cipher_suites": _suites([]),
        "tls_1_0_cipher_suites": _suites([]),
        "tls_1_1_cipher_suites": _suites([]),
        "tls_1_2_cipher_suites": _suites(GOOD_12),
        "tls_1_3_cipher_suites": _suites(["TLS_AES_128_GCM_SHA256"]),
        "session_renegotiation": _done(
            {
                "supports_secure_renegotiation": True,
                "is_vulnerable_to_client_renegotiation_dos": False,
                "client_renegotiations_success_count": 0,
            }
        ),
        "tls_compression": _done({"supports_compression": False}),
        "heartbleed": _done({"is_vulnerable_to_heartbleed": False}),
        "openssl_ccs_injection": _done({"is_vulnerable_to_ccs_injection": False}),
        "robot": _done({"robot_result": "NOT_VULNERABLE_RSA_NOT_SUPPORTED"}),
        "tls_fallback_scsv": _done({"supports_fallback_scsv": True}),
    }
    scans.update(changes)
    return {"server_scan_results": [{"scan_status": "COMPLETED", "scan_result": scans}]}


def test_a_good_report_passes() -> None:
    assert evaluate(report()) == []


def test_old_protocols_weak_suites_and_renegotiation_are_flagged() -> None:
    assert evaluate(report(tls_1_0_cipher_suites=_suites(["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"])))
    assert evaluate(report(tls_1_1_cipher_suites=_suites(["TLS_RSA_WITH_AES_128_CBC_SHA"])))
    for weak in (
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    ):
        problems = evaluate(report(tls_1_2_cipher_suites=_suites([*GOOD_12, weak])))
        assert problems and weak in problems[0]
    reneg = _done(
        {
            "supports_secure_renegotiation": True,
            "is_vulnerable_to_client_renegotiation_dos": True,
            "client_renegotiations_success_count": 10,
        }
    )
    assert evaluate(report(session_renegotiation=reneg))
    assert evaluate(report(tls_compression=_done({"supports_compression": True})))
