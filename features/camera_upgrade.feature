@needs_sim
Feature: Upgrading cameras behind the gateway over ULC
  Cameras are child devices of the gateway; each record follows its own camera. The
  gateway checks a camera package whole (kind, version, every file's digest), sends its
  files over ULC (chunks, acknowledgements, resume after a cut), and commits; the camera
  switches to the new files at once, restarts its app and reports the version it came
  back with, which decides the record.

  Background:
    Given the reference gateway is online at version "1.0.0"
    And 2 cameras behind the gateway at version "1.0.0"

  Scenario: A new camera app is installed on every camera and reported
    When the platform pushes camera package "2.0.0" to every camera
    Then every camera's record ends in success within 30 seconds
    And camera 0 runs version "2.0.0" with its new files
    And camera 1 runs version "2.0.0" with its new files
    And the platform shows camera 0 at version "2.0.0"
    And the platform shows camera 1 at version "2.0.0"

  Scenario: A corrupted package fails before anything reaches the camera
    When the platform pushes camera package "2.0.0" with a file that does not match its digest to camera 0
    Then camera 0's record fails within 30 seconds with a reason containing "sha256 mismatch"
    And no file reached camera 0
    And camera 0 runs version "1.0.0" with its old files

  Scenario: A connection cut mid-file is resumed where the camera left off
    Given camera 0 drops the connection after 40000 bytes
    When the platform pushes camera package "2.0.0" to camera 0
    Then camera 0's record ends in success within 30 seconds
    And camera 0 resumed the transfer at byte 40000
    And camera 0 runs version "2.0.0" with its new files
    And the platform shows camera 0 at version "2.0.0"

  Scenario: A camera that loses power mid-transfer boots its old app and the transfer resumes
    Given camera 0 loses power after 40000 bytes
    When the platform pushes camera package "2.0.0" to camera 0
    Then camera 0's record ends in success within 30 seconds
    And camera 0 rebooted on version "1.0.0" during the transfer
    And camera 0 resumed the transfer at byte 40000
    And camera 0 runs version "2.0.0" with its new files
    And the platform shows camera 0 at version "2.0.0"

  Scenario: A file the camera rejects fails the upgrade with the camera's reason
    Given camera 0 rejects files matching "bin/*"
    When the platform pushes camera package "2.0.0" to camera 0
    Then camera 0's record fails within 30 seconds with a reason containing "file too large for the camera's flash"
    And camera 0 runs version "1.0.0" with its old files
    And the platform shows camera 0 at version "1.0.0"

  Scenario: A camera that boots back into its old version fails as rolled back
    Given camera 0 boots its old version after an upgrade
    When the platform pushes camera package "2.0.0" to camera 0
    Then camera 0's record fails within 30 seconds with a reason containing "came back on 1.0.0, not 2.0.0: it rolled back"
    And camera 0 runs version "1.0.0" with its old files
    And the platform shows camera 0 at version "1.0.0"
