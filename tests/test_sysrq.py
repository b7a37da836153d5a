"""SysRq key validation (bridge.console.sysrq.validate_keys) as every front end uses it."""

from __future__ import annotations

import pytest

from bridge.console.sysrq import DESTRUCTIVE_KEYS, SYSRQ_KEYS, describe, help_text, validate_keys


def test_reisub_is_accepted_and_lowercased() -> None:
    assert validate_keys("REISUB") == "reisub"
    assert validate_keys("ReIsUb") == "reisub"


@pytest.mark.parametrize("key", ["h", "t", "m", "w", "l", "0", "9", "s", "u", "b"])
def test_single_kernel_keys(key: str) -> None:
    assert validate_keys(key) == key
    assert validate_keys(key.upper()) == key


def test_the_key_set_is_the_kernels() -> None:
    assert set(SYSRQ_KEYS) == set("0123456789bcdefghijklmnopqrstuvwxyz")
    assert "a" not in SYSRQ_KEYS  # the kernel defines no action for a
    assert {"b", "c", "o", "e", "i"} <= DESTRUCTIVE_KEYS
    assert "h" not in DESTRUCTIVE_KEYS and "t" not in DESTRUCTIVE_KEYS


@pytest.mark.parametrize(
    "keys,position,shown",
    [
        ("a", 1, "'a'"),
        ("h!", 2, "'!'"),
        ("RE IS", 3, "' '"),
        ("é", 1, "'é'"),
        ("\x1b", 1, "'\\x1b'"),
    ],
)
def test_unknown_keys_are_refused_naming_the_first(keys: str, position: int, shown: str) -> None:
    with pytest.raises(ValueError, match="is not a SysRq key") as info:
        validate_keys(keys)
    assert f"(position {position})" in str(info.value)
    assert shown in str(info.value)


def test_denied_keys_are_refused_in_any_case_anywhere_in_a_sequence() -> None:
    deny = frozenset({"c"})
    with pytest.raises(ValueError, match=r"'c' \(crash\) is denied on this port"):
        validate_keys("c", deny)
    with pytest.raises(ValueError, match="denied"):
        validate_keys("hC", deny)
    with pytest.raises(ValueError, match="denied"):
        validate_keys("b", frozenset({"B"}))
    assert validate_keys("REISUB", deny) == "reisub"


def test_empty_is_refused() -> None:
    with pytest.raises(ValueError, match="no SysRq key given"):
        validate_keys("")


@pytest.mark.parametrize("keys", [None, True, 7, ["h"]])
def test_not_a_string_is_refused(keys: object) -> None:
    # str(None) == "None" would be n, o (power off), n, e (terminate all tasks)
    with pytest.raises(ValueError, match="must be a string"):
        validate_keys(keys)  # type: ignore[arg-type]


def test_help_lines() -> None:
    assert describe("T") == "t: tasks - Dump the list of current tasks and their state"
    assert "(needs CONFIG_KGDB)" in describe("g")
    assert len(help_text().splitlines()) == len(SYSRQ_KEYS)
