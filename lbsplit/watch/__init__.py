"""The watch part: judging v2 and acting on the verdict.

`judge` is pure (numbers in, a structured verdict out). `endpoint` (the HTTP client for
the health endpoint and webhooks; the only other HTTP request is nginx.process asking
nginx's own status page), `logsource` (nginx's access log) and `prometheus` are the
sources, read and judged through `sources`; `gate` is the promotion checklist (the
transaction's precheck); `hooks` runs the user's commands and `notify` sends events in
each chat tool's format; `watchdog` is the runner (probe, clock, decide, act through
rollout), `memory` its state between runs; `planview` shows the plan, status and alerts.
The commands that change the stage through the gate are in app.
May import: rollout, nginx, model, errors, config, validate, progress, stamps.
"""
