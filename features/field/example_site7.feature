# Written by `ota-hil reproduce --emit-feature`: edit the field file and emit again
# rather than editing this file by hand.
@needs_sim
Feature: Field reproduction: site 7 night upgrade, gateway gw-0042
  Reproduces sims/fields/example-site7.yaml (seed 7).
  # The 2.1.0 push of 3 October to the 24 sub-GHz nodes behind gw-0042. The platform
  # shows node 5 failed and on 1.0.0; the gateway's log shows node 17 rebooting mid-
  # transfer, the uplink dropping for 15 seconds and the download pausing at 60%.

  Scenario: site 7 night upgrade, gateway gw-0042: the nodes end as they did in the field
    Given the firmware images are drawn from seed 7
    And a simulated fleet behind the gateway:
      """
      radio: '324'
      nodes: 24
      loss: 0.1
      burst: 3.0
      seed: 7
      overrides:
      - nodes: 18-20
        loss: 0.35
        burst: 6.0
      - nodes: '21'
        version: 0.9.0
      """
    And node 17 loses power after 300 blocks
    And node 5 loses power during the apply
    And the broker is down from 20 s to 35 s of the radio session
    And MQTT messages from the gateway on "/+/+/child/+/firmware/upgrade/progress" are duplicated from 40 s to 50 s of the radio session
    And the download stalls at 60% for 1 seconds
    When the platform pushes firmware "2.1.0" of 64 KiB to every node
    Then within 120 seconds every record ends, and only these nodes fail:
      | node | reason                                        |
      | 5    | rolled back to 1.0.0: power lost during apply |
    And every node runs version "2.1.0" except these:
      | node | version |
      | 5    | 1.0.0   |
    And nothing is bricked: every node runs its old or its new image
