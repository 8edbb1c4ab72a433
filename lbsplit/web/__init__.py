"""The web part: `lbsplit dashboard`, the rollout as a page in the browser.

`page` turns a view (plain dicts) into the HTML text with inline SVG charts (pure); `server`
gathers the view from the other parts on each request and serves it, read-only unless started
with --allow-actions, when its two buttons run the real `lbsplit revert` and `lbsplit promote`.
May import: app, watch, rollout, model, errors, config, stamps.
"""
