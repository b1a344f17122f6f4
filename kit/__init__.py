"""autoresearch-rl kit: the harness, the agent and the analysis around prepare.py and train.py."""
