"""The node protocol: radio frames, missing-block sets, birth certificates, key wrapping,
and the contract (NodeLink) between the gateway's sessions and the nodes' medium."""
