@needs_nodes
Feature: Upgrading radio nodes behind the gateway
  The platform pushes a firmware to the 324 or BLE nodes behind the gateway. The
  gateway broadcasts the image, reads each node's bitmap and repairs, exchanges keys
  against each node's birth certificate, starts the upgrade, verifies the new version,
  and reports each node's result as that child device's record.

  Background:
    Given the reference gateway is online at version "1.0.0"

  Scenario Outline: A fleet upgrade over a lossy radio (<radio>, <loss>% loss, burst <burst>)
    Given a fleet of 50 <radio> nodes behind the gateway with <loss>% loss and burst <burst>
    When the platform pushes firmware "2.0.0" of 16 KiB to every node
    Then every node's record ends in success within 60 seconds
    And every node runs version "2.0.0"
    And the platform shows every node at version "2.0.0"

    Examples:
      | radio | loss | burst |
      | 324   | 0    | 1     |
      | 324   | 10   | 1     |
      | 324   | 10   | 5     |
      | 324   | 30   | 1     |
      | 324   | 30   | 5     |
      | ble   | 10   | 1     |
      | ble   | 30   | 5     |

  @single_broker
  Scenario: A thousand nodes over a lossy radio, each record true to its node
    Given a fleet of 1000 324 nodes behind the gateway with 10% loss and burst 1
    And node 17 is offline
    And node 404 has a forged birth certificate
    And node 777 fails its self-test
    When the platform pushes firmware "2.0.0" of 16 KiB to every node
    Then within 120 seconds every record ends, and only these nodes fail:
      | node | reason                    |
      | 17   | offline                   |
      | 404  | birth certificate refused |
      | 777  | rolled back to 1.0.0      |
    And nothing is bricked: every node runs its old or its new image
    And the platform shows every upgraded node at version "2.0.0"

  Scenario: An offline node fails with a reason and the rest succeed
    Given a fleet of 20 324 nodes behind the gateway with 10% loss and burst 1
    And node 7 is offline
    When the platform pushes firmware "2.0.0" of 8 KiB to every node
    Then within 60 seconds node 7 fails with a reason containing "offline" and every other node succeeds
    And node 7 runs version "1.0.0"
    And nothing is bricked: every node runs its old or its new image

  Scenario: A forged birth certificate is refused
    Given a fleet of 10 324 nodes behind the gateway
    And node 3 has a forged birth certificate
    When the platform pushes firmware "2.0.0" of 8 KiB to every node
    Then within 60 seconds node 3 fails with a reason containing "birth certificate refused" and every other node succeeds
    And node 3 runs version "1.0.0"

  Scenario: A node that loses power mid-transfer resumes from its bitmap
    Given a fleet of 10 324 nodes behind the gateway with 10% loss and burst 1
    And node 4 loses power after 60 blocks
    When the platform pushes firmware "2.0.0" of 8 KiB to every node
    Then every node's record ends in success within 60 seconds
    And node 4 resumed from its bitmap after the power cut
    And every node runs version "2.0.0"

  Scenario Outline: A failed apply rolls back (<fault>)
    Given a fleet of 10 324 nodes behind the gateway
    And node 2 <fault>
    When the platform pushes firmware "2.0.0" of 8 KiB to every node
    Then within 60 seconds node 2 fails with a reason containing "<reason>" and every other node succeeds
    And node 2 runs version "1.0.0"
    And the gateway reported node 2 at version "1.0.0" after the upgrade
    And nothing is bricked: every node runs its old or its new image

    Examples:
      | fault                         | reason                                    |
      | loses power during the apply  | rolled back to 1.0.0: power lost          |
      | fails its self-test           | rolled back to 1.0.0: self-test failed    |

  Scenario Outline: A node that cannot take the image keeps the old one (<fault>)
    Given a fleet of 10 324 nodes behind the gateway
    And node 2 <fault>
    When the platform pushes firmware "2.0.0" of 8 KiB to every node
    Then within 60 seconds node 2 fails with a reason containing "<reason>" and every other node succeeds
    And node 2 runs version "1.0.0"
    And the platform shows node 2 at version "1.0.0"
    And nothing is bricked: every node runs its old or its new image

    Examples:
      | fault                         | reason                      |
      | writes every block corrupted  | image check failed          |
      | refuses the key exchange      | key exchange refused        |

  Scenario: The same firmware pushed twice makes one broadcast session
    Given a fleet of 20 324 nodes behind the gateway
    When the platform pushes the same firmware "2.0.0" of 8 KiB in two tasks
    Then every node's record ends in success within 60 seconds
    And the gateway ran one broadcast session
