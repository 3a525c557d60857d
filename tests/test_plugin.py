"""The pytest plugin as a user's project sees it: options, parametrization, the ota fixture."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

PROBE = """
def test_backend(broker_backend):
    print("BACKEND=" + broker_backend)
"""


def test_broker_option_runs_a_test_once_per_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBE)
    result = pytester.runpytest(
        "-p", "no:asyncio", "--broker", "embedded", "--broker", "mqtt://127.0.0.1:1", "-v"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_backend?embedded? PASSED*", "*test_backend?mqtt*PASSED*"])


def test_comma_separated_backends_and_duplicates(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBE)
    result = pytester.runpytest(
        "-p", "no:asyncio", "--broker", "embedded,mosquitto", "--broker", "embedded"
    )
    result.assert_outcomes(passed=2)


def test_ini_default_applies_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nota_brokers = mosquitto embedded\n")
    pytester.makepyfile(PROBE)
    result = pytester.runpytest("-p", "no:asyncio", "-v", "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BACKEND=mosquitto*", "*BACKEND=embedded*"])


def test_ota_fixture_runs_a_whole_system(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os

        def test_push(ota):
            client = ota.client
            fw = ota.run(client.upload_firmware(os.urandom(1000), "gateway-product", "2.0.0"))
            task = ota.run(client.create_task(fw["id"]))
            ota.run(client.deploy(task["id"], ["gateway-1"]))
            assert ota.system.gateway.version == "1.0.0"
            assert ota.run(client.records(taskId=task["id"]))[0]["state"] == "waiting"
        """
    )
    result = pytester.runpytest("-p", "no:asyncio", "--broker", "embedded")
    result.assert_outcomes(passed=1)


def test_unreachable_external_broker_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_needs_system(ota):\n    pass\n")
    result = pytester.runpytest("-p", "no:asyncio", "--broker", "mqtt://127.0.0.1:1", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*mqtt://127.0.0.1:1*"])


def test_a_failing_test_names_its_log_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_fails(ota):\n    assert ota.system.gateway is None\n")
    result = pytester.runpytest("-p", "no:asyncio", "--broker", "embedded")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ota-hil log*", "*full log of this test: *test_fails*.log"])
    (log,) = (pytester.path / "reports" / "logs").glob("*test_fails*.log")
    assert "platform REST and files on http://127.0.0.1:" in log.read_text()


def test_a_failing_scenario_carries_its_logs_into_allure(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".feature",
        broken="Feature: Broken\n  Scenario: It fails\n"
        "    Given a port that logged, then a failure\n",
    )
    pytester.makepyfile(
        test_broken="""
        from pytest_bdd import given, scenarios

        scenarios("broken.feature")

        @given("a port that logged, then a failure")
        def _(ota, ota_log):
            ports = ota_log.with_suffix("")
            ports.mkdir(parents=True, exist_ok=True)
            (ports / "coordinator.log").write_text("<< de ad be ef\\n")
            raise AssertionError("on purpose")
        """
    )
    results = pytester.path / "allure"
    outcome = pytester.runpytest(
        "-p", "no:asyncio", "--broker", "embedded", f"--alluredir={results}"
    )
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*port log: *coordinator.log"])
    (result,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    names = [a["name"] for a in result.get("attachments", [])]
    assert "coordinator.log" in names, names
    assert "test_broken.py_test_it_fails.log" in names, names
