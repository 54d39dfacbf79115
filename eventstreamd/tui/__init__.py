"""`eventstreamd tui`: the live Textual dashboard, attached to the daemon's control socket.

Modules: `client` (the control-socket client), `app` (connection and actions),
`dashboard` / `detail` / `dialogs` (screens), `widgets`, `format` (how values
are shown), `main` (the command's entry point) and `sample` (a fixed snapshot
for snapshot tests and the docs screenshot).
"""
