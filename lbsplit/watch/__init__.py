"""The watch part: judging v2 and acting on the verdict.

`judge` is pure (numbers in, a structured verdict out). `endpoint` (the health
endpoint and webhooks: the only HTTP client besides process's status-page probe) and
`logsource` (nginx's access log) are the sources; `gate` is the promotion checklist,
handed to the transaction as its precheck; `watchdog` is the runner (probe, clock,
decide, act through rollout); `report` puts v1 and v2 side by side.
May import: rollout, nginx, model, errors, config.
"""
