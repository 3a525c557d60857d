Feature: Upgrading the gateway's own files: its application and its kernel drivers
  The gateway application (lua and .so files) and the kernel drivers (.ko files) are child
  devices of the gateway. A package replaces a component's files as a whole: verified,
  staged beside the live files, switched in one rename, then checked (the app: every .so
  loads and every .lua parses; the drivers: the old modules unloaded and the new ones
  loaded), and switched back when the check fails. A power loss at any step leaves the
  old or the new files, and the next start finishes or undoes the switch.

  Background:
    Given the reference gateway is online at version "1.0.0"

  @needs_in_process_gateway
  Scenario Outline: A new <component> version is installed and runs
    Given the gateway <component> runs version "1.0.0"
    When the platform pushes <component> package "2.0.0"
    Then the record of the gateway <component> ends in success within 30 s
    And the gateway <component> runs version "2.0.0" with its new files
    And the platform shows the gateway <component> at version "2.0.0"

    Examples:
      | component |
      | app       |
      | drivers   |

  @needs_in_process_gateway
  Scenario Outline: A corrupted <component> package fails before anything changes
    Given the gateway <component> runs version "1.0.0"
    When the platform pushes <component> package "2.0.0" with a file that does not match its digest
    Then the record of the gateway <component> fails within 30 s with a reason containing "sha256"
    And the gateway <component> runs version "1.0.0" with its old files
    And the platform shows the gateway <component> at version "1.0.0"

    Examples:
      | component |
      | app       |
      | drivers   |

  @needs_in_process_gateway
  Scenario Outline: A <component> release that fails its check is rolled back (<why>)
    Given the gateway <component> runs version "1.0.0"
    When the platform pushes <component> package "2.0.0" that fails once switched in
    Then the record of the gateway <component> fails within 30 s with a reason containing "<reason>"
    And the record of the gateway <component> fails within 30 s with a reason containing "rolled back to 1.0.0"
    And the gateway <component> runs version "1.0.0" with its old files
    And the platform shows the gateway <component> at version "1.0.0"

    Examples:
      | component | why                        | reason                                  |
      | app       | a library that won't load  | lib/libota.so does not load             |
      | drivers   | built for another kernel   | version magic '5.4.0 SMP mod_unload aarch64' should be |

  @needs_in_process_gateway
  Scenario Outline: A power loss mid-switch leaves the old or the new <component> (after <step>)
    Given the gateway <component> runs version "1.0.0"
    And the gateway loses power after the <component> switch step "<step>"
    When the platform pushes <component> package "2.0.0"
    And the gateway restarts after the power loss
    Then the gateway <component> runs version "<version>" with its <which> files
    And the platform shows the gateway <component> at version "<version>"

    Examples:
      | component | step      | version | which |
      | app       | flipped   | 1.0.0   | old   |
      | app       | committed | 2.0.0   | new   |
      | drivers   | flipped   | 1.0.0   | old   |
      | drivers   | committed | 2.0.0   | new   |

  Scenario Outline: An upgrade of the <module> module is refused as not supported yet
    When the platform pushes firmware "2.0.0" to the gateway <module> module
    Then the record of the gateway <module> module fails within 10 s with the reason "<reason>"

    Examples:
      | module | reason                                                      |
      | wifi   | not_supported_yet: WiFi module upgrades are not supported yet by this gateway  |
      | uwb    | not_supported_yet: UWB module upgrades are not supported yet by this gateway   |
