"""The watch part: judging v2, acting on the verdict, and the commands that change the stage.

`judge` is pure (numbers in, a structured verdict out). `endpoint` (the HTTP client for
the health endpoint and webhooks; the only other HTTP request is nginx.process asking
nginx's own status page) and `logsource` (nginx's access log) are the sources, read and
judged through `sources`; `gate` is the promotion checklist (the transaction's precheck)
and runs apply, promote and revert with `hooks` (the user's commands) and `notify`
(events in each chat tool's format); `watchdog` is the runner (probe, clock, decide,
act through rollout), `memory` its state between runs; `planview` shows the plan,
status and alerts.
May import: rollout, nginx, model, errors, config, validate, progress.
"""
