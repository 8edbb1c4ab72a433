"""The fleet part: many nginx load balancers as one rollout, through etcd v3.

`store` is the only code that talks to etcd (its documented v3 JSON API, through
requests). The agent and the fleet commands that will use it are not built yet.
May import: watch, rollout, nginx, model, errors, config.
"""
