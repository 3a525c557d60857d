"""Steps about the mock platform: firmware, tasks, records, the file server."""

from __future__ import annotations

from pytest_bdd import given, parsers, then, when

from harness.pytest_plugin import Ota

from .common import ScenarioContext, gateway_id, record_of, wait_for


def _upload(ota: Ota, scenario: ScenarioContext, version: str, kib: int, **kwargs) -> None:
    data = scenario.image(version, kib * 1024)
    scenario.firmware = ota.run(
        ota.client.upload_firmware(data, ota.system.config.product_id, version, **kwargs)
    )


@given(parsers.parse('a firmware "{version}" of {kib:d} KiB for the gateway signed with {method}'))
def _(ota: Ota, scenario: ScenarioContext, version: str, kib: int, method: str) -> None:
    _upload(ota, scenario, version, kib, sign_method=method)


@given(parsers.parse('a firmware "{version}" of {kib:d} KiB for the gateway whose sign is wrong'))
def _(ota: Ota, scenario: ScenarioContext, version: str, kib: int) -> None:
    _upload(ota, scenario, version, kib, sign_method="md5", sign="0" * 32)


@given(
    parsers.parse(
        'a firmware "{version}" of {kib:d} KiB for the gateway with parameter {key} "{value}"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, version: str, kib: int, key: str, value: str) -> None:
    _upload(ota, scenario, version, kib, parameters={key: value})


@given(
    parsers.re(r"the gateway has (?P<seconds>\d+) seconds? to answer an upgrade"),
    converters={"seconds": int},
)
def _(scenario: ScenarioContext, seconds: int) -> None:
    scenario.response_timeout = seconds


@given(parsers.parse("the file server cuts the next download after half the firmware"))
def _(ota: Ota, scenario: ScenarioContext) -> None:
    assert scenario.firmware is not None
    ota.run(ota.client.set_download_faults(cutAfterBytes=scenario.firmware["size"] // 2))


def _task(ota: Ota, scenario: ScenarioContext, mode: str) -> None:
    assert scenario.firmware is not None, "no firmware was uploaded in this scenario"
    scenario.task = ota.run(
        ota.client.create_task(
            scenario.firmware["id"],
            name=f"{mode} {scenario.firmware['version']}",
            mode=mode,
            timeoutSeconds=scenario.timeout,
            responseTimeoutSeconds=scenario.response_timeout,
        )
    )
    ota.run(ota.client.deploy(scenario.task["id"], [gateway_id(ota)]))


@given("a pull task for the firmware deployed to the gateway")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    _task(ota, scenario, "pull")


@when("the platform pushes the firmware to the gateway")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    _task(ota, scenario, "push")


@when("the platform reads the gateway's firmware version")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    scenario.answers["read"] = ota.run(ota.client.read_version(gateway_id(ota), timeout=5))


@then(parsers.parse('the answer is "{version}"'))
def _(scenario: ScenarioContext, version: str) -> None:
    assert scenario.answers["read"] == version


@then(parsers.parse("the gateway's record goes {states} within {seconds:d} seconds"))
def _(ota: Ota, scenario: ScenarioContext, states: str, seconds: int) -> None:
    expected = [s.strip() for s in states.split("->")]
    record = wait_for(
        lambda: record_of(ota, scenario, gateway_id(ota)),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        seconds,
        f"record of {gateway_id(ota)} reaching {expected[-1]}",
    )
    seen = [h["state"] for h in record["history"]]
    assert seen == expected, f"record went {seen}, errorReason {record['errorReason']!r}"


@then(parsers.parse("the gateway's record reached progress {progress:d}"))
def _(ota: Ota, scenario: ScenarioContext, progress: int) -> None:
    assert record_of(ota, scenario, gateway_id(ota))["progress"] == progress


@then(
    parsers.parse(
        'the gateway\'s record fails within {seconds:d} seconds with a reason containing "{text}"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, seconds: int, text: str) -> None:
    record = wait_for(
        lambda: record_of(ota, scenario, gateway_id(ota)),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        seconds,
        f"record of {gateway_id(ota)} failing",
    )
    assert record["state"] == "failed", f"record ended {record['state']}, not failed"
    assert text in (record["errorReason"] or ""), f"errorReason: {record['errorReason']!r}"


@then(parsers.parse('the platform shows the gateway at version "{version}"'))
def _(ota: Ota, version: str) -> None:
    wait_for(
        lambda: ota.run(ota.client.device(gateway_id(ota)))["firmwareVersion"],
        lambda v: v == version,
        5,
        f"platform's firmware version of {gateway_id(ota)} being {version}",
    )


@then("the file server resumed the download with a Range request")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    assert scenario.firmware is not None
    log = ota.run(ota.client.file_log())
    cut = [s for s in log if s["cut"]]
    ranged = [s for s in log if s["range"] and s["status"] == 206]
    assert cut, f"no download was cut: {log}"
    assert ranged, f"no Range request followed the cut: {log}"
    assert cut[0]["sent"] + ranged[-1]["sent"] == scenario.firmware["size"], log
