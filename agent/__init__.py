"""The medfl hospital agent: local training, policy, the daemon and its command line."""
