"""The fleet part: many nginx load balancers as one rollout, through etcd v3.

`store` is the only code that talks to etcd (its documented v3 JSON API, through http.client);
`protocol` says what the fleet keeps there (members, changes, reports, counts), pure; `agent` runs
on every load balancer and applies the desired state with the local transaction; `commands` are
the fleet's apply, revert, status, history, forget and the fenced watchdog election; `front`
chooses between this host's commands and the fleet's.
May import: watch, rollout, nginx, model, errors, config, validate, timing.
"""
