Feature: Upgrading the gateway's own firmware
  The platform pushes a firmware (or the gateway pulls one); the gateway replies,
  downloads the image over HTTP, checks its size and sign, installs it, reports
  progress up to 100 and then its new version.

  Background:
    Given the reference gateway is online at version "1.0.0"

  Scenario Outline: A pushed firmware upgrade succeeds (<method>)
    Given a firmware "2.0.0" of 256 KiB for the gateway signed with <method>
    When the platform pushes the firmware to the gateway
    Then the gateway's record goes waiting -> processing -> success within 10 seconds
    And the gateway's record reached progress 100
    And the platform shows the gateway at version "2.0.0"
    And the gateway runs version "2.0.0"

    Examples:
      | method |
      | md5    |
      | SHA256 |

  Scenario: A firmware with a wrong sign fails and changes nothing
    Given a firmware "2.0.0" of 64 KiB for the gateway whose sign is wrong
    When the platform pushes the firmware to the gateway
    Then the gateway's record fails within 10 seconds with a reason containing "sign mismatch"
    And the platform shows the gateway at version "1.0.0"
    And the gateway runs version "1.0.0"

  Scenario: The gateway pulls its firmware
    Given a firmware "2.0.0" of 64 KiB for the gateway signed with md5
    And a pull task for the firmware deployed to the gateway
    When the gateway asks the platform for firmware
    Then the gateway's record goes waiting -> processing -> success within 10 seconds
    And the platform shows the gateway at version "2.0.0"

  Scenario: A pull with nothing to offer is answered not_found
    When the gateway asks the platform for firmware
    Then the platform answers the pull with code "not_found"
    And the gateway runs version "1.0.0"

  Scenario: The platform reads the gateway's firmware version
    When the platform reads the gateway's firmware version
    Then the answer is "1.0.0"

  Scenario: An upgrade for a target the gateway does not support is refused
    Given a firmware "1.1.0" of 16 KiB for the gateway with parameter target "zigbee"
    When the platform pushes the firmware to the gateway
    Then the gateway's record fails within 10 seconds with a reason containing "unsupported_target"
    And the gateway runs version "1.0.0"

  Scenario: An offline gateway's record fails on the reply timeout
    Given the gateway is offline
    And the gateway has 1 second to answer an upgrade
    And a firmware "2.0.0" of 16 KiB for the gateway signed with md5
    When the platform pushes the firmware to the gateway
    Then the gateway's record fails within 10 seconds with a reason containing "no reply"

  Scenario: A download cut half way is resumed and the upgrade succeeds
    Given a firmware "2.0.0" of 512 KiB for the gateway signed with md5
    And the file server cuts the next download after half the firmware
    When the platform pushes the firmware to the gateway
    Then the gateway's record goes waiting -> processing -> success within 10 seconds
    And the file server resumed the download with a Range request
    And the gateway runs version "2.0.0"
