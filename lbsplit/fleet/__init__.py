"""The fleet part: many nginx load balancers as one rollout, through etcd v3.

`store` is the only code that talks to etcd (its documented v3 JSON API, through http.client);
`protocol` says what the fleet keeps there (members, changes, reports, counts), pure; `agent` runs
on every load balancer and applies the desired state with this host's commands (given to it by
app); `commands` are the fleet's apply, revert, status, history, forget and the fenced watchdog
election. Which of a host's or the fleet's commands runs is app's choice, not the fleet's.
May import: watch, rollout, nginx, model, errors, config, validate, timing, stamps.
"""
