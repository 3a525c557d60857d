Feature: Upgrading the gateway application (lua and .so files)
  The gateway application is a child device of the gateway. A package replaces its files
  as a whole: verified, staged beside the live app, switched in one rename, checked (every
  .so loads, every .lua parses), and switched back when the check fails. A power loss at
  any step leaves the old or the new app, and the next start finishes or undoes the switch.

  Background:
    Given the reference gateway is online at version "1.0.0"
    And the gateway app runs version "1.0.0"

  Scenario: A new app version is installed and runs
    When the platform pushes app package "2.0.0" to the gateway app
    Then the gateway app's record ends in success within 30 seconds
    And the gateway app runs version "2.0.0" with its new files
    And the platform shows the gateway app at version "2.0.0"

  Scenario: A corrupted package fails before anything changes
    When the platform pushes app package "2.0.0" with a file that does not match its digest to the gateway app
    Then the gateway app's record fails within 30 seconds with a reason containing "sha256"
    And the gateway app runs version "1.0.0" with its old files

  Scenario: An app whose library does not load is rolled back
    When the platform pushes app package "2.0.0" with a library that does not load to the gateway app
    Then the gateway app's record fails within 30 seconds with a reason containing "rolled back to 1.0.0"
    And the gateway app runs version "1.0.0" with its old files
    And the platform shows the gateway app at version "1.0.0"

  Scenario Outline: A power loss mid-switch leaves the old or the new app (after <step>)
    Given the gateway loses power after the app switch step "<step>"
    When the platform pushes app package "2.0.0" to the gateway app
    And the gateway restarts after the power loss
    Then the gateway app runs version "<version>" with its <which> files
    And the platform shows the gateway app at version "<version>"

    Examples:
      | step      | version | which |
      | flipped   | 1.0.0   | old   |
      | committed | 2.0.0   | new   |
