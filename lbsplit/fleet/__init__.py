"""The fleet part: many nginx load balancers as one rollout, through etcd v3.

`store` is the only code that talks to etcd (its documented v3 JSON API, through requests);
`protocol` says what the fleet keeps there; `agent` runs on every load balancer and applies the
desired state with the local transaction; `commands` are the fleet's apply, revert, status,
history and watchdog election.
May import: watch, rollout, nginx, model, errors, config.
"""
