"""Many workers, one frontier: `autoresearch swarm`.

    worker.py   one worker: its own folder and git repository, its own agent, trains and scores there
    hub.py      the one writer: claims, the ledger, the branch, decisions within one platform, stale re-apply
    driver.py   the workers as Ray actors (a local Ray instance, or a cluster), fed and watched by the hub
"""
